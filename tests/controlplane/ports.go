package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
)

// portSet is saved in the state folder so a restart on the same folder comes
// back on the same addresses (clients keep their kubeconfig, etcd its peer URL).
type portSet struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

func loadOrPickPorts(path string, apiserver int) (portSet, error) {
	var p portSet
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &p); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if p.EtcdClient, err = freePort(); err != nil {
			return p, err
		}
		if p.EtcdPeer, err = freePort(); err != nil {
			return p, err
		}
	default:
		return p, err
	}
	if apiserver != 0 {
		p.APIServer = apiserver
	}
	if p.APIServer == 0 {
		if p.APIServer, err = freePort(); err != nil {
			return p, err
		}
	}
	out, _ := json.Marshal(p)
	return p, os.WriteFile(path, out, 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
