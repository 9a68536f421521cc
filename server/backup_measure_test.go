package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/backup"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/server"
)

// TestBackupMeasure measures a backup's size and the time to save and
// restore it for KEYSTORE_BACKUP_RECORDS records (a 32-byte fingerprint
// and a 200 B response each, as bench-large's), on a one-node cluster
// preloaded through BatchService. Skipped unless the variable is set:
//
//	KEYSTORE_BACKUP_RECORDS=1000000 go test -run TestBackupMeasure -v -timeout 30m ./server
func TestBackupMeasure(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("KEYSTORE_BACKUP_RECORDS"))
	if n <= 0 {
		t.Skip("set KEYSTORE_BACKUP_RECORDS to measure")
	}
	c := testcluster.Start(t, testcluster.Options{Size: 1})
	bc := keystorev1.NewBatchServiceClient(c.Conn("n1"))
	const batch, workers = 1000, 4
	var next, done atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	body := make([]byte, 200)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				first := next.Add(batch) - batch
				if first >= int64(n) {
					return
				}
				last := min(first+batch, int64(n))
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				var claims []*keystorev1.BatchOperation
				for i := first; i < last; i++ {
					key := fmt.Sprintf("record-%09d", i)
					fp := fmt.Sprintf("%032d", i)
					claims = append(claims, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{
						Namespace: "bench", Key: key, Fingerprint: []byte(fp)}}})
				}
				res, err := bc.Batch(ctx, &keystorev1.BatchRequest{Operations: claims})
				if err != nil {
					cancel()
					errs <- err
					return
				}
				var completes []*keystorev1.BatchOperation
				for i, r := range res.GetResults() {
					if r.GetStatus() != nil {
						continue
					}
					completes = append(completes, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Complete{Complete: &keystorev1.CompleteRequest{
						Namespace: "bench", Key: claims[i].GetClaim().GetKey(), Token: r.GetClaim().GetToken(),
						Response: &keystorev1.Response{Code: 200, Body: body}}}})
				}
				if _, err := bc.Batch(ctx, &keystorev1.BatchRequest{Operations: completes}); err != nil {
					cancel()
					errs <- err
					return
				}
				cancel()
				if d := done.Add(int64(len(completes))); d/100000 != (d-int64(len(completes)))/100000 {
					t.Logf("preload: %d records in %.0f s", d, time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("preload: %d records in %.1f s", done.Load(), time.Since(start).Seconds())
	disk := c.Server("n1").Store().DiskUsage()
	t.Logf("node on disk: %+v", disk)

	dir := t.TempDir()
	path := filepath.Join(dir, "measure.backup")
	start = time.Now()
	stream, err := keystorev1.NewClusterServiceClient(c.Conn("n1")).Backup(context.Background(), &keystorev1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := backup.SaveFile(path, func(w io.Writer) error {
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, err := w.Write(msg.GetData()); err != nil {
				return err
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	save := time.Since(start)
	start = time.Now()
	if _, err := backup.VerifyFile(path); err != nil {
		t.Fatal(err)
	}
	verify := time.Since(start)
	t.Logf("backup: %d bytes (%.1f MiB), %d records, index %d; save (stream + fsync + read-back verify) %.2f s; status (verify) %.2f s",
		sum.Size, float64(sum.Size)/(1<<20), sum.Header.Records, sum.Header.Index, save.Seconds(), verify.Seconds())

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start = time.Now()
	res, err := server.Restore(server.RestoreConfig{DataDir: filepath.Join(dir, "restored"), Name: "r1"}, f)
	if err != nil {
		t.Fatal(err)
	}
	restore := time.Since(start)
	start = time.Now()
	_, conn := startFreshNode(t, server.Config{Name: "r1", DataDir: filepath.Join(dir, "restored")})
	waitServing(t, conn, time.Minute)
	t.Logf("restore: %d records in %.2f s; restored node start → SERVING %.2f s", res.Records, restore.Seconds(), time.Since(start).Seconds())
}
