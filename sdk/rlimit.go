package sdk

import (
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// RaiseFDLimit raises the process's soft file-descriptor limit to its hard
// limit (every room holds sockets and a segment) and logs the limit in
// force. Go's runtime already raises it at start on Linux; this makes sure,
// and says so in the log. It returns the soft limit in force.
func RaiseFDLimit(logger hclog.Logger) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		logger.Warn("cannot read the file-descriptor limit", "error", err)
		return 0
	}
	if lim.Cur < lim.Max {
		old := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			logger.Warn("cannot raise the file-descriptor limit", "soft", old, "hard", lim.Max, "error", err)
			return old
		}
		logger.Info("raised the file-descriptor limit", "from", old, "to", lim.Cur)
		return lim.Cur
	}
	logger.Info("file-descriptor limit", "soft", lim.Cur, "hard", lim.Max)
	return lim.Cur
}
