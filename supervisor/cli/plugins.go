package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// plugins is `supervisor plugins [lock]`: it lists the plugins of the
// plugin directory with their version, SHA-256 and pin, or writes the
// lock file that pins them all.
func plugins(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("plugins", stderr)
	var sf startFlags
	sf.register(f, "warn")
	asJSON := f.Bool("json", false, "print the list as JSON")
	f.socket = ""
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	lock := len(pos) == 1 && pos[0] == "lock"
	if len(pos) > 1 || len(pos) == 1 && !lock {
		return fmt.Errorf("%w: want `plugins` or `plugins lock`", errUsage)
	}
	cfg, err := sf.load()
	if lock && err != nil {
		// A stale pin must not stop the command that replaces it.
		sf.lock = os.DevNull
		cfg, err = sf.load()
	}
	if err != nil {
		return err
	}
	dir := cfg.PluginDir
	if dir == "" {
		dir = supervisor.DefaultPluginDir()
	}
	infos, err := supervisor.Catalog{Dir: dir}.Inspect(ctx, cfg.Pins)
	if err != nil {
		return err
	}
	if lock {
		pins := map[string]string{}
		for _, pi := range infos {
			pins[pi.Binary] = pi.SHA256
		}
		path := sf.lockPath()
		if err := os.WriteFile(path, config.FormatLock(pins), 0o644); err != nil {
			return fmt.Errorf("write the lock file: %w", err)
		}
		fmt.Fprintf(stdout, "pinned %d plugins of %s in %s\n", len(pins), dir, path)
		return nil
	}
	if *asJSON {
		return printJSON(stdout, infos)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tVERSION\tAPI\tSHA256\tPIN")
	for _, pi := range infos {
		pin := "-"
		switch {
		case pi.Pin == "":
		case pi.Pin == pi.SHA256:
			pin = "ok"
		default:
			pin = "MISMATCH (pinned " + pi.Pin[:12] + "…)"
		}
		version := pi.Version
		if pi.Error != "" {
			version = "(" + pi.Error + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", pi.Kind, pi.Name, version, pi.APIVersions, pi.SHA256, pin)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\nplugin directory: %s\n", dir)
	return nil
}
