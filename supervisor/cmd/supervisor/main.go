// Command supervisor is phased's supervisor and its command-line client.
// Run `supervisor help` for the verbs.
package main

import (
	"os"

	"github.com/phased/phased/supervisor/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
