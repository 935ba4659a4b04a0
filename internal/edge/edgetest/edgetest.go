// Package edgetest runs the real things the edge talks to, for tests and
// benchmarks: Caddy (its admin API on loopback) and an ACME CA, Pebble, with
// pebble-challtestsrv as the DNS server that resolves every name to one
// address, so HTTP-01 challenges really happen. Everything listens inside the
// caller's network namespace; it needs root (ports 80 and 443).
package edgetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Ports and addresses inside the namespace.
const (
	CaddyAdmin = "http://127.0.0.1:2019"
	ACMEDir    = "https://127.0.0.1:14000/dir"
	pebbleMgmt = "https://127.0.0.1:15000"
	dnsAddr    = "127.0.0.1:8053"
	dnsMgmt    = "http://127.0.0.1:8055"
	// DNS is the test's DNS server (pebble-challtestsrv): every name resolves
	// to Addr unless SetA says otherwise.
	DNS = dnsAddr
)

// Env is a running Caddy, Pebble and DNS server.
type Env struct {
	Dir      string
	Addr     string // every name resolves to it; Caddy serves on it
	CARoot   string // PEM file: the root of Pebble's own HTTPS (for --acme-ca-root)
	RootFile string // PEM file: Pebble's issuing root, which clients trust
	Roots    *x509.CertPool
	// AdminSocket, when set, puts Caddy's admin API on this unix socket (mode
	// 0600) instead of CaddyAdmin; Admin says which.
	AdminSocket string

	caddy *exec.Cmd
	procs []*exec.Cmd
}

// bin finds a tool: $FCM_<NAME> (upper case, - as _), else PATH.
func bin(name string) (string, error) {
	env := "FCM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found (set %s or put it on PATH; make test-tools installs it)", name, env)
	}
	return p, nil
}

// Start puts addr on lo and starts the DNS server, Pebble and Caddy, with
// their files and logs in dir.
func Start(dir, addr string) (*Env, error) { return StartSocket(dir, addr, "") }

// StartSocket is Start with Caddy's admin API on the unix socket sock (as
// the quick start sets it up), or on CaddyAdmin when sock is "".
func StartSocket(dir, addr, sock string) (*Env, error) {
	e := &Env{Dir: dir, Addr: addr, AdminSocket: sock}
	if out, err := exec.Command("ip", "addr", "replace", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip addr: %v: %s", err, out)
	}
	if err := e.start(); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *Env) start() error {
	chall, err := bin("pebble-challtestsrv")
	if err != nil {
		return err
	}
	pebble, err := bin("pebble")
	if err != nil {
		return err
	}
	if _, err := bin("caddy"); err != nil {
		return err
	}
	if err := e.run(chall, nil, "-dnsserver", dnsAddr, "-defaultIPv4", e.Addr, "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "", "-management", strings.TrimPrefix(dnsMgmt, "http://")); err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(e.Dir, "pebble-cert.pem"), filepath.Join(e.Dir, "pebble-key.pem")
	if err := selfSigned(certFile, keyFile); err != nil {
		return err
	}
	e.CARoot = certFile
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
		"certificate": certFile, "privateKey": keyFile, "httpPort": 80, "tlsPort": 443,
		"ocspResponderURL": "", "externalAccountBindingRequired": false,
		// Zero: otherwise Pebble may send Retry-After as an HTTP date, which
		// Caddy 2.6's ACME client cannot parse (issuance then waits minutes).
		"retryAfter": map[string]any{"authz": 0, "order": 0},
	}}
	data, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(e.Dir, "pebble.json")
	if err := os.WriteFile(cfgFile, data, 0o644); err != nil {
		return err
	}
	if err := e.run(pebble, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		"-config", cfgFile, "-dnsserver", dnsAddr); err != nil {
		return err
	}
	if err := e.fetchRoot(); err != nil {
		return err
	}
	return e.StartCaddy()
}

// run starts a helper process logging to <dir>/<name>.log.
func (e *Env) run(path string, env []string, args ...string) error {
	log, err := os.Create(filepath.Join(e.Dir, filepath.Base(path)+".log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(path, args...)
	cmd.Dir = e.Dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.procs = append(e.procs, cmd)
	return nil
}

// fetchRoot saves Pebble's issuing root (a new one at each Pebble start).
func (e *Env) fetchRoot() error {
	pem, err := os.ReadFile(e.CARoot)
	if err != nil {
		return err
	}
	trust := x509.NewCertPool()
	trust.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trust}}}
	var body []byte
	err = retry(20*time.Second, func() error {
		resp, err := c.Get(pebbleMgmt + "/roots/0")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("pebble roots: %s", resp.Status)
		}
		body, err = io.ReadAll(resp.Body)
		return err
	})
	if err != nil {
		return fmt.Errorf("pebble did not start (see %s/pebble.log): %w", e.Dir, err)
	}
	e.RootFile = filepath.Join(e.Dir, "pebble-root.pem")
	e.Roots = x509.NewCertPool()
	if !e.Roots.AppendCertsFromPEM(body) {
		return errors.New("pebble root: no certificate")
	}
	return os.WriteFile(e.RootFile, body, 0o644)
}

// StartCaddy starts Caddy with an empty config (its storage, in dir, is kept
// across restarts, as on a real host) and waits for its admin API.
func (e *Env) StartCaddy() error {
	home := filepath.Join(e.Dir, "caddy-home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(e.Dir, "caddy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	path, _ := bin("caddy")
	cmd := exec.Command(path, "run") // no Caddyfile in its directory: an empty config
	if e.AdminSocket != "" {
		cfg := filepath.Join(home, "admin.json")
		data, _ := json.Marshal(map[string]any{"admin": map[string]any{"listen": e.Admin() + "|0600"}})
		if err := os.WriteFile(cfg, data, 0o644); err != nil {
			return err
		}
		cmd = exec.Command(path, "run", "--config", cfg)
	}
	cmd.Dir = home
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.caddy = cmd
	return retry(20*time.Second, func() error {
		resp, err := e.AdminClient().Get(e.AdminURL() + "/config/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// Admin is Caddy's admin address as fcm's --caddy-admin takes it.
func (e *Env) Admin() string {
	if e.AdminSocket != "" {
		return "unix/" + e.AdminSocket
	}
	return CaddyAdmin
}

// AdminURL is the base URL of admin requests made with AdminClient.
func (e *Env) AdminURL() string {
	if e.AdminSocket != "" {
		return "http://127.0.0.1" // a Host Caddy accepts on a socket
	}
	return CaddyAdmin
}

// AdminClient reaches Caddy's admin API, on its socket if it has one.
func (e *Env) AdminClient() *http.Client {
	if e.AdminSocket == "" {
		return &http.Client{Timeout: 10 * time.Second}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", e.AdminSocket)
		}, DisableKeepAlives: true}}
}

// StopCaddy stops Caddy and waits for it to exit.
func (e *Env) StopCaddy() {
	if e.caddy == nil {
		return
	}
	e.caddy.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { e.caddy.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.caddy.Process.Kill()
		<-done
	}
	e.caddy = nil
}

// Close stops everything.
func (e *Env) Close() {
	e.StopCaddy()
	for _, p := range e.procs {
		p.Process.Kill()
		p.Wait()
	}
	e.procs = nil
}

// Client is an HTTPS client that trusts Pebble's root and reaches every name
// at Addr, as DNS would in real life.
func (e *Env) Client() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: e.Roots},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return dialer.DialContext(ctx, network, net.JoinHostPort(e.Addr, port))
			},
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and localhost, its own root.
func selfSigned(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "fcm test ACME server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

// SetA makes the test's DNS answer host with the IPv4 address addr (and no
// IPv6 one), as an A record someone created would.
func (e *Env) SetA(host, addr string) error {
	body, _ := json.Marshal(map[string]any{"host": host + ".", "addresses": []string{addr}})
	resp, err := http.Post(dnsMgmt+"/add-a", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("challtestsrv add-a %s: %s %s", host, resp.Status, b)
	}
	return nil
}
