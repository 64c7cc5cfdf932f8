package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
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

// gatewayAPICRDDir finds config/crd/<channel> of the pinned gateway-api module
// in the module cache: the build downloaded it, so no copy lives in this repo.
func gatewayAPICRDDir(channel string) (string, error) {
	cache := os.Getenv("GOMODCACHE")
	if cache == "" {
		gopath := os.Getenv("GOPATH")
		if gopath == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			gopath = filepath.Join(home, "go")
		}
		cache = filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "pkg", "mod")
	}
	dir := filepath.Join(cache, "sigs.k8s.io", "gateway-api@"+consts.BundleVersion, "config", "crd", channel)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("Gateway API %s CRDs not found (run `go mod download sigs.k8s.io/gateway-api` in tests/controlplane, or pass --gateway-api-crd-dir): %w", consts.BundleVersion, err)
	}
	return dir, nil
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
