// Command portcullis is the Portcullis authorization server and sidecar.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes scripts can rely on.
const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitConfig = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Environ())
	stop()
	os.Exit(code)
}

const usage = `Portcullis: authorization server, forward-auth endpoint and sidecar.

Usage:
  portcullis serve [flags]     run the server (embedded etcd by default)
  portcullis config check [--config F] [flags]
                               validate the configuration and print it
                               with secrets redacted (exit 3 when invalid)
  portcullis config reference  print the configuration reference (Markdown)
  portcullis routes test --config F METHOD URL
                               which route rule a request matches and the
                               permission it needs (exit 0 matched, 1 no
                               rule matches, 4 refused as ambiguous)
  portcullis version           print the version

Admin commands (talk to a running server's API; docs/cli.md):
{{admin}}
Run 'portcullis serve -h' for the flags, 'portcullis COMMAND -h' for a
command's flags.
`

// configError marks errors caused by the configuration (exit code 3).
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

func run(ctx context.Context, args []string, stdout, stderr io.Writer, environ []string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, fullUsage())
		return exitUsage
	}
	var err error
	switch args[0] {
	case "serve":
		var cfg Config
		cfg, err = loadConfig("portcullis serve", args[1:], environ)
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			fmt.Fprintf(stderr, "portcullis: configuration: %v\n", err)
			return exitConfig
		}
		err = serve(ctx, cfg, stderr)
	case "config":
		return configCommand(args[1:], stdout, stderr, environ)
	case "routes":
		if len(args) < 2 || args[1] != "test" {
			fmt.Fprintf(stderr, "portcullis: usage: portcullis routes test --config F METHOD URL\n")
			return exitUsage
		}
		return routesTest(args[2:], stdout, stderr, environ)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "portcullis", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, fullUsage())
		return exitOK
	default:
		if isAdminCommand(args[0]) {
			return runAdmin(ctx, args, stdout, stderr, environ)
		}
		fmt.Fprintf(stderr, "portcullis: unknown command %q\n\n%s", args[0], fullUsage())
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "portcullis: %v\n", err)
		var ce configError
		if errors.As(err, &ce) {
			return exitConfig
		}
		return exitError
	}
	return exitOK
}
