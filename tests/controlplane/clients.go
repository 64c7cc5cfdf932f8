package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/gateway-api/pkg/consts"
)

func writeKubeconfig(path, host string, pki pkiFiles) error {
	ca, err := os.ReadFile(pki.CACert)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: controlplane
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: controlplane
  context: {cluster: controlplane, user: admin, namespace: default}
current-context: controlplane
`, host, base64.StdEncoding.EncodeToString(ca), pki.AdminToken)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

type clients struct {
	core *kubernetes.Clientset
	ext  *apiextensions.Clientset
}

func newClients(kubeconfig string) (*clients, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	core, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	ext, err := apiextensions.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &clients{core: core, ext: ext}, nil
}

func (c *clients) waitReady(ctx context.Context) error {
	return wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		body, err := c.core.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	})
}

func (c *clients) waitNamespace(ctx context.Context, name string) error {
	return wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := c.core.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return err == nil, nil
	})
}

// gatewayAPIVersions are the releases whose CRDs --gateway-api-version can
// install. v1.6.3 is the module this program requires; v1.7.0's go.mod asks
// for a newer Go than this module builds with, so its files are only read.
var gatewayAPIVersions = []string{consts.BundleVersion, "v1.7.0"}

// gatewayAPICRDDir finds config/crd/<channel> of gateway-api@version in the
// module cache, downloading the module's files there when they are missing
// (files only: nothing of v1.7.0 is built), so no copy of upstream YAML lives
// in this repo.
func gatewayAPICRDDir(version, channel string) (string, error) {
	module := "sigs.k8s.io/gateway-api@" + version
	dir := filepath.Join(moduleCache(), "sigs.k8s.io", "gateway-api@"+version)
	if _, err := os.Stat(dir); err != nil {
		if dir, err = downloadModule(module); err != nil {
			return "", fmt.Errorf("Gateway API %s CRDs not found and `go mod download %s` failed (or pass --gateway-api-crd-dir): %w", version, module, err)
		}
	}
	crds := filepath.Join(dir, "config", "crd", channel)
	if _, err := os.Stat(crds); err != nil {
		return "", fmt.Errorf("Gateway API %s has no %s channel: %w", version, channel, err)
	}
	return crds, nil
}

func moduleCache() string {
	if cache := os.Getenv("GOMODCACHE"); cache != "" {
		return cache
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		gopath = filepath.Join(home, "go")
	}
	return filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "pkg", "mod")
}

// moduleToolchain is the Go that `go mod download` runs as: gateway-api v1.7.0
// declares go 1.27, and an older go refuses to report the module it has just
// unpacked. The go command fetches this toolchain from the module proxy once.
const moduleToolchain = "go1.27.3"

// downloadModule runs `go mod download -json` outside any module and returns
// the module's folder.
func downloadModule(module string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN="+moduleToolchain, "GOFLAGS=-modcacherw")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", err
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("reading `go mod download -json` output: %w", err)
	}
	if info.Error != "" {
		return "", errors.New(info.Error)
	}
	return info.Dir, nil
}

// installCRDs creates (or, on a restarted folder, updates) every CRD in dir
// and waits until each is Established.
func (c *clients) installCRDs(ctx context.Context, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	var names []string
	for _, file := range files {
		crds, err := readCRDs(file)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, crd := range crds {
			if err := c.applyCRD(ctx, crd); err != nil {
				return fmt.Errorf("%s: %w", crd.Name, err)
			}
			names = append(names, crd.Name)
		}
	}
	for _, name := range names {
		if err := c.waitEstablished(ctx, name); err != nil {
			return fmt.Errorf("%s not Established: %w", name, err)
		}
	}
	return nil
}

// readCRDs decodes the CustomResourceDefinitions of a multi-document file;
// other kinds (the upstream bundle also ships an admission policy) are skipped.
func readCRDs(file string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*apiextensionsv1.CustomResourceDefinition
	for {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := dec.Decode(crd); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if crd.Kind == "CustomResourceDefinition" {
			out = append(out, crd)
		}
	}
}

func (c *clients) applyCRD(ctx context.Context, crd *apiextensionsv1.CustomResourceDefinition) error {
	api := c.ext.ApiextensionsV1().CustomResourceDefinitions()
	_, err := api.Create(ctx, crd, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	existing, err := api.Get(ctx, crd.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	crd.ResourceVersion = existing.ResourceVersion
	_, err = api.Update(ctx, crd, metav1.UpdateOptions{})
	return err
}

func (c *clients) waitEstablished(ctx context.Context, name string) error {
	return wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		crd, err := c.ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}
