package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/api"
)

func (a *app) serveCommand() *cobra.Command {
	var listen, socket, tokenFile, tlsCert, tlsKey string
	var shutdownTimeout time.Duration
	c := &cobra.Command{
		Use:   "serve [--listen 127.0.0.1:PORT]",
		Short: "Serve the HTTP/JSON API (REST and WebSocket) over this home",
		Long: `Serve boxctl's API (docs/api.md; the OpenAPI document is at /openapi.json).
The server is one more client of the home: boxes it creates are detached and
keep running when it exits, and the CLI and other servers work on the same
home at the same time.

By default it listens on a unix socket in the home (api.sock, mode 0600: the
file's permissions are the access control). --listen ADDR listens on TCP
instead and asks every request for a bearer token, read from --token-file
(or generated there, mode 0600; default: api-token in the home). --tls-cert
and --tls-key serve HTTPS.

SIGTERM or Ctrl-C stops it gracefully: requests and exec streams in flight
get --shutdown-timeout to finish, then the execs left are ended (their
commands are killed); boxes keep running.`,
		Example: `  boxctl serve &
  curl --unix-socket ~/.local/share/boxctl/api.sock http://boxctl/v1/boxes
  boxctl serve --listen 127.0.0.1:7070 --token-file ./token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if (tlsCert == "") != (tlsKey == "") {
				return errors.New("--tls-cert and --tls-key go together: give both or neither")
			}
			if listen == "" && (tlsCert != "" || tokenFile != "") {
				return errors.New("--token-file and --tls-cert apply to --listen ADDR (TCP); the unix socket is guarded by its file mode")
			}
			if listen != "" && socket != "" {
				return errors.New("--listen and --socket exclude each other: one server listens on one address")
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
				return fmt.Errorf("create the home %s: %w", cfg.Home, err)
			}
			var opts []api.Option
			var ln net.Listener
			var where string
			if listen == "" {
				if socket == "" {
					socket = filepath.Join(cfg.Home, "api.sock")
				}
				if ln, err = listenUnix(socket); err != nil {
					return err
				}
				where = "unix:" + socket
			} else {
				if tokenFile == "" {
					tokenFile = filepath.Join(cfg.Home, "api-token")
				}
				token, err := loadOrCreateToken(tokenFile)
				if err != nil {
					return err
				}
				opts = append(opts, api.WithToken(token))
				if ln, err = net.Listen("tcp", listen); err != nil {
					return fmt.Errorf("--listen %s: %w", listen, err)
				}
				scheme := "http"
				if tlsCert != "" {
					cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
					if err != nil {
						ln.Close()
						return fmt.Errorf("--tls-cert/--tls-key: %w", err)
					}
					ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
					scheme = "https"
				}
				where = scheme + "://" + ln.Addr().String() + " (token in " + tokenFile + ")"
			}
			defer ln.Close()
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			opts = append(opts, api.WithLogger(a.logger(cfg).Named("api")))
			srv := api.NewServer(rt, opts...)
			hs := &http.Server{
				Handler:           srv,
				ConnContext:       api.ConnContext,
				ReadHeaderTimeout: 10 * time.Second,
				IdleTimeout:       2 * time.Minute,
			}
			served := make(chan error, 1)
			go func() { served <- hs.Serve(ln) }()
			fmt.Fprintf(a.stdout, "boxctl serve: listening on %s\n", where)
			select {
			case err := <-served:
				return fmt.Errorf("serve: %w", err)
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			defer cancel()
			// Stop taking connections; requests and exec streams (whose
			// connections http.Server.Shutdown does not track) get the
			// timeout to finish, then the execs left are ended.
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); _ = srv.Shutdown(sctx) }()
			_ = hs.Shutdown(sctx)
			wg.Wait()
			_ = hs.Close()
			if socket != "" {
				_ = os.Remove(socket)
			}
			fmt.Fprintln(a.stderr, "boxctl serve: stopped")
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&listen, "listen", "", "listen on this TCP address (e.g. 127.0.0.1:7070) with bearer-token auth, instead of the unix socket")
	fl.StringVar(&socket, "socket", "", "unix socket to listen on (default: api.sock in the home)")
	fl.StringVar(&tokenFile, "token-file", "", "bearer token for --listen: read from FILE if it exists, else generated and written there (mode 0600) (default: api-token in the home)")
	fl.StringVar(&tlsCert, "tls-cert", "", "serve HTTPS on --listen with this certificate (PEM)")
	fl.StringVar(&tlsKey, "tls-key", "", "the private key of --tls-cert (PEM)")
	fl.DurationVar(&shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM, how long requests and execs in flight may take before the execs left are ended")
	return c
}

// listenUnix listens on a unix socket only its owner can use. A socket file
// left by a server that died is replaced; one a live server answers on is
// not.
func listenUnix(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another server is listening there (stop it, or give --socket PATH)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", path, err)
		}
	}
	// The socket is created with mode 0600 from the start: no window in
	// which another user could connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln, nil
}

// loadOrCreateToken reads the token in path, or makes one and writes it
// there (mode 0600) when the file does not exist.
func loadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		token := strings.TrimSpace(string(data))
		if len(token) < 16 {
			return "", fmt.Errorf("--token-file %s: the token must be at least 16 characters (delete the file to have one generated)", path)
		}
		return token, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	token := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("--token-file %s: write a new token: %w", path, err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("--token-file %s: %w", path, err)
	}
	return token, nil
}
