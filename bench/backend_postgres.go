package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// maxPostgresConns caps the pool; the script starts PostgreSQL with
// max_connections=300.
const maxPostgresConns = 256

// postgresStore does the lifecycle with one table and two statements, each
// its own transaction (autocommit), with synchronous_commit on:
//
//	Claim:    INSERT INTO idem ... ON CONFLICT (key) DO NOTHING RETURNING token;
//	          if no row, SELECT fp, state, response FROM idem WHERE key = $1
//	Complete: UPDATE idem SET state = 2, response = $3, expires_at = ...
//	          WHERE key = $1 AND token = $2
//
// token comes from a sequence (bigserial), so it fences Complete like
// keystore's token. Nothing deletes expired rows (a favour to PostgreSQL).
type postgresStore struct {
	pool *pgxpool.Pool
}

const postgresSchema = `CREATE TABLE IF NOT EXISTS idem (
	key        text PRIMARY KEY,
	fp         bytea NOT NULL,
	state      smallint NOT NULL,
	token      bigserial NOT NULL,
	response   bytea,
	expires_at timestamptz NOT NULL
)`

func openPostgres(ctx context.Context, endpoints []string, workers int) (*postgresStore, error) {
	if len(endpoints) != 1 {
		return nil, errors.New("postgres: want exactly one endpoint")
	}
	dsn := endpoints[0]
	if !strings.Contains(dsn, "://") {
		dsn = "postgres://postgres@" + dsn + "/postgres?sslmode=disable"
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(min(max(workers, 1), maxPostgresConns))
	cfg.MinConns = cfg.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &postgresStore{pool: pool}
	if err := s.setup(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// setup creates the table and refuses to run unless every commit is
// flushed to disk before it is acknowledged.
func (s *postgresStore) setup(ctx context.Context) error {
	for _, setting := range []string{"synchronous_commit", "fsync"} {
		var v string
		if err := s.pool.QueryRow(ctx, "SHOW "+setting).Scan(&v); err != nil {
			return fmt.Errorf("SHOW %s: %w", setting, err)
		}
		if v != "on" {
			return fmt.Errorf("postgres: %s is %q; want on (the comparison needs durable commits)", setting, v)
		}
	}
	_, err := s.pool.Exec(ctx, postgresSchema)
	if err != nil && strings.Contains(err.Error(), "duplicate key") {
		// Two first runs raced on CREATE TABLE IF NOT EXISTS; the other won.
		err = nil
	}
	return err
}

const (
	pgClaim = `INSERT INTO idem (key, fp, state, expires_at)
	VALUES ($1, $2, 1, now() + make_interval(secs => $3))
	ON CONFLICT (key) DO NOTHING RETURNING token`
	pgSelect   = `SELECT fp, state, response FROM idem WHERE key = $1`
	pgComplete = `UPDATE idem SET state = 2, response = $3, expires_at = now() + make_interval(secs => $4)
	WHERE key = $1 AND token = $2 AND state = 1`
)

func (s *postgresStore) Claim(ctx context.Context, key string, fp []byte) (claim, error) {
	var token int64
	err := s.pool.QueryRow(ctx, pgClaim, key, fp, claimLease.Seconds()).Scan(&token)
	if err == nil {
		return claim{Acquired: true, Token: uint64(token)}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return claim{}, err
	}
	var (
		storedFP []byte
		state    int16
		response []byte
	)
	err = s.pool.QueryRow(ctx, pgSelect, key).Scan(&storedFP, &state, &response)
	if errors.Is(err, pgx.ErrNoRows) {
		return claim{}, errors.New("row vanished between INSERT and SELECT")
	}
	if err != nil {
		return claim{}, err
	}
	if string(storedFP) != string(fp) {
		return claim{}, errFingerprintMismatch
	}
	if state == 2 {
		return claim{Completed: true, Response: response}, nil
	}
	return claim{}, nil
}

func (s *postgresStore) Complete(ctx context.Context, key string, _ []byte, c claim, resp []byte) error {
	tag, err := s.pool.Exec(ctx, pgComplete, key, int64(c.Token), resp, claimRetention.Seconds())
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return errClaimLost
	}
	return nil
}

func (s *postgresStore) Close() error {
	s.pool.Close()
	return nil
}
