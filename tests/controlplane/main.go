// Command controlplane runs a real etcd and a real kube-apiserver in one
// process on 127.0.0.1, for the xbackend-controller tests. Contract: docs/design.md §9.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"sigs.k8s.io/gateway-api/pkg/consts"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	dir            string
	channel        string
	version        string
	port           int
	crdDir         string
	noFsync        bool
	waitReady      time.Duration
	exitWithParent bool
}

func parseFlags() (options, error) {
	var o options
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "state folder: etcd data, certificates, kubeconfig (reused on restart)")
	fs.StringVar(&o.channel, "gateway-api-channel", "standard", "Gateway API CRDs to install: standard, experimental or none")
	fs.StringVar(&o.version, "gateway-api-version", consts.BundleVersion, "Gateway API release whose CRDs to install: "+strings.Join(gatewayAPIVersions, " or "))
	fs.IntVar(&o.port, "port", 0, "kube-apiserver port on 127.0.0.1 (0: the port saved in --dir, else a free one)")
	fs.StringVar(&o.crdDir, "gateway-api-crd-dir", "", "read Gateway API CRDs from this folder instead of the pinned module")
	fs.BoolVar(&o.noFsync, "unsafe-no-fsync", false, "etcd skips fsync (faster, loses data on power loss)")
	fs.BoolVar(&o.exitWithParent, "exit-with-parent", false, "stop (as on SIGTERM) when the process that started this one exits; for test harnesses")
	fs.DurationVar(&o.waitReady, "ready-timeout", 3*time.Minute, "how long to wait for the apiserver and CRDs")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if o.dir == "" {
		return o, fmt.Errorf("--dir is required")
	}
	switch o.channel {
	case "standard", "experimental", "none":
	default:
		return o, fmt.Errorf("--gateway-api-channel must be standard, experimental or none, not %q", o.channel)
	}
	if !slices.Contains(gatewayAPIVersions, o.version) {
		return o, fmt.Errorf("--gateway-api-version must be %s, not %q", strings.Join(gatewayAPIVersions, " or "), o.version)
	}
	abs, err := filepath.Abs(o.dir)
	if err != nil {
		return o, err
	}
	o.dir = abs
	return o, nil
}

func run() error {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(2)
	}
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return err
	}
	ports, err := loadOrPickPorts(filepath.Join(o.dir, "ports"), o.port)
	if err != nil {
		return err
	}
	pki, err := ensurePKI(filepath.Join(o.dir, "pki"))
	if err != nil {
		return err
	}

	// The apiserver command installs the SIGTERM/SIGINT handler; its context is
	// the one every step below stops on.
	cmd := app.NewAPIServerCommand()
	ctx := cmd.Context()
	if o.exitWithParent {
		go exitWithParent()
	}

	etcd, err := startEtcd(filepath.Join(o.dir, "etcd"), ports, o.noFsync)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	cmd.SetArgs(apiserverArgs(o, ports, pki))
	apiErr := make(chan error, 1)
	go func() { apiErr <- cmd.Execute() }()

	host := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.APIServer))
	kubeconfig := filepath.Join(o.dir, "kubeconfig")
	setupCtx, cancel := context.WithTimeout(ctx, o.waitReady)
	setupErr := make(chan error, 1)
	go func() { setupErr <- setup(setupCtx, o, host, pki, kubeconfig) }()

	select {
	case err := <-apiErr:
		cancel()
		return fmt.Errorf("kube-apiserver exited during start-up: %v", err)
	case err := <-setupErr:
		cancel()
		if err != nil {
			return err
		}
	}
	fmt.Printf("KUBECONFIG=%s\n", kubeconfig)
	os.Stdout.Sync()

	// Runs until the signal context ends; the apiserver then shuts down gracefully.
	if err := <-apiErr; err != nil && ctx.Err() == nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

func apiserverArgs(o options, ports portSet, pki pkiFiles) []string {
	issuer := "https://kubernetes.default.svc.cluster.local"
	return []string{
		"--etcd-servers=http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.EtcdClient)),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports.APIServer),
		"--cert-dir=" + filepath.Join(o.dir, "pki"),
		"--tls-cert-file=" + pki.ServingCert,
		"--tls-private-key-file=" + pki.ServingKey,
		"--client-ca-file=" + pki.CACert,
		"--token-auth-file=" + pki.Tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + issuer,
		"--service-account-key-file=" + pki.SAPub,
		"--service-account-signing-key-file=" + pki.SAKey,
		"--api-audiences=" + issuer,
		"--service-cluster-ip-range=10.96.0.0/16",
		// Nothing reconciles the kubernetes Service endpoints here, and no pods run,
		// so the ServiceAccount admission plugin has nothing to do.
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		// On SIGTERM, drain ordinary requests, then give long-running ones
		// (watches) 2 s instead of the 60 s ShutdownTimeout: a stop/restart on
		// the same --dir under a connected client takes seconds, not a minute.
		"--shutdown-send-retry-after=true",
		"--v=0",
	}
}

// setup waits for the apiserver, writes the kubeconfig and installs the CRDs.
func setup(ctx context.Context, o options, host string, pki pkiFiles, kubeconfig string) error {
	if err := writeKubeconfig(kubeconfig, host, pki); err != nil {
		return err
	}
	c, err := newClients(kubeconfig)
	if err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return fmt.Errorf("waiting for /readyz: %w", err)
	}
	if o.channel != "none" {
		dir := o.crdDir
		if dir == "" {
			if dir, err = gatewayAPICRDDir(o.version, o.channel); err != nil {
				return err
			}
		}
		if err := c.installCRDs(ctx, dir); err != nil {
			return fmt.Errorf("installing Gateway API CRDs from %s: %w", dir, err)
		}
	}
	if err := c.waitNamespace(ctx, "default"); err != nil {
		return fmt.Errorf("waiting for namespace default: %w", err)
	}
	return nil
}

// exitWithParent stops this process the way SIGTERM does once its parent is
// gone, so a test binary that dies without cleanup leaves no apiserver behind.
func exitWithParent() {
	parent := os.Getppid()
	for range time.Tick(time.Second) {
		if os.Getppid() != parent {
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}
