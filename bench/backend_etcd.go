package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdPrefix keeps the benchmark's keys apart from anything else in etcd.
const etcdPrefix = "/bench/"

// etcdStore does the lifecycle with etcd v3 transactions:
//
//	Claim:    Txn If(CreateRevision(key) == 0) Then(Put(key, "P|"+fp)) Else(Get(key))
//	Complete: Txn If(ModRevision(key) == claimRevision) Then(Put(key, "C|"+fp+"|"+resp))
//
// The claim's revision fences Complete the way keystore's token does. No
// lease is attached per key (a favour to etcd: keystore's records expire,
// these do not).
type etcdStore struct {
	c *clientv3.Client
}

// openEtcd makes a client of endpoints; with sec, over TLS (etcd takes no
// token here: with --client-cert-auth the certificate is the credential).
func openEtcd(ctx context.Context, endpoints []string, sec security) (*etcdStore, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		TLS:         sec.tls,
		DialTimeout: 5 * time.Second,
		Context:     context.WithoutCancel(ctx),
	}
	if sec.quiet {
		cfg.Logger = zap.NewNop()
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	return &etcdStore{c: c}, nil
}

func (s *etcdStore) Claim(ctx context.Context, key string, fp []byte) (claim, error) {
	k := etcdPrefix + key
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(pendingValue(fp)))).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return claim{}, err
	}
	if resp.Succeeded {
		// The put is the transaction's only write: its revision is the
		// header's.
		return claim{Acquired: true, Token: uint64(resp.Header.Revision)}, nil
	}
	if len(resp.Responses) != 1 {
		return claim{}, fmt.Errorf("else branch returned %d responses", len(resp.Responses))
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 {
		return claim{}, errors.New("key vanished between compare and get")
	}
	return parseValue(kvs[0].Value, fp)
}

var errClaimLost = errors.New("claim lost")

func (s *etcdStore) Complete(ctx context.Context, key string, fp []byte, c claim, resp []byte) error {
	k := etcdPrefix + key
	r, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", int64(c.Token))).
		Then(clientv3.OpPut(k, string(completedValue(fp, resp)))).
		Commit()
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return errClaimLost
	}
	return nil
}

func (s *etcdStore) Close() error { return s.c.Close() }
