package main

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStore does the lifecycle with two commands:
//
//	Claim:    SET key "P|"+fp NX PX 30000; if not set, GET key
//	Complete: SET key "C|"+fp+"|"+resp XX PX 600000
//
// Complete is not fenced (XX only checks that the key exists): a holder
// whose claim expired and was taken over would overwrite the new holder's
// record. The server runs with appendonly yes and appendfsync always, so an
// acknowledged write is in the fsynced AOF; it is a single node.
type redisStore struct {
	c *redis.Client
}

func openRedis(_ context.Context, endpoints []string, workers int) (*redisStore, error) {
	if len(endpoints) != 1 {
		return nil, errors.New("redis: want exactly one endpoint")
	}
	c := redis.NewClient(&redis.Options{
		Addr:         endpoints[0],
		PoolSize:     max(workers, 1),
		MinIdleConns: min(workers, 64),
		// A worker never waits for a connection: one per worker.
		PoolTimeout: 30 * time.Second,
	})
	return &redisStore{c: c}, nil
}

func (s *redisStore) Claim(ctx context.Context, key string, fp []byte) (claim, error) {
	ok, err := s.c.SetArgs(ctx, key, pendingValue(fp), redis.SetArgs{Mode: "NX", TTL: claimLease}).Result()
	switch {
	case err == nil && ok == "OK":
		return claim{Acquired: true}, nil
	case err != nil && !errors.Is(err, redis.Nil):
		return claim{}, err
	}
	v, err := s.c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return claim{}, errors.New("key vanished between SET NX and GET")
	}
	if err != nil {
		return claim{}, err
	}
	return parseValue(v, fp)
}

func (s *redisStore) Complete(ctx context.Context, key string, fp []byte, _ claim, resp []byte) error {
	ok, err := s.c.SetArgs(ctx, key, completedValue(fp, resp), redis.SetArgs{Mode: "XX", TTL: claimRetention}).Result()
	if errors.Is(err, redis.Nil) || (err == nil && ok != "OK") {
		return errClaimLost
	}
	return err
}

func (s *redisStore) Close() error { return s.c.Close() }
