package cli

import (
	"net"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// controlFlags are start's --listen and --token-file; they override the
// config's control block.
type controlFlags struct{ listen, tokenFile string }

func (c *controlFlags) register(f *pflag.FlagSet) {
	f.StringVar(&c.listen, "listen", "", "also serve the control API on TCP at `HOST:PORT` (e.g. 127.0.0.1:7070), to callers with the bearer token; needs --token-file (default: the config's control block, else off)")
	f.StringVar(&c.tokenFile, "token-file", "", "`FILE` holding the bearer token for --listen: at least 16 bytes, mode 0600 or stricter")
}

func (c *controlFlags) apply(cfg *config.Config) {
	if c.listen != "" {
		cfg.Control.Listen = c.listen
	}
	if c.tokenFile != "" {
		cfg.Control.TokenFile = c.tokenFile
	}
}

// listenTCP opens the control API's TCP listener that ctl asks for, with
// its token; nil when ctl asks for none.
func listenTCP(ctl config.Control, logger hclog.Logger) (net.Listener, string, error) {
	if ctl.Listen == "" {
		return nil, "", nil
	}
	ln, token, err := supervisor.ListenTCP(ctl.Listen, ctl.TokenFile)
	if err != nil {
		return nil, "", err
	}
	logger.Info("control API listening on TCP; calls need the bearer token", "addr", ln.Addr(), "token_file", ctl.TokenFile)
	if !supervisor.Loopback(ln.Addr()) {
		logger.Warn("the control API is reachable from the network, and TCP calls and the token travel in clear text: "+
			"put a TLS-terminating proxy or an SSH tunnel in front, or listen on 127.0.0.1", "addr", ln.Addr())
	}
	return ln, token, nil
}
