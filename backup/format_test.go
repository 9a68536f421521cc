package backup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"testing/iotest"
	"time"
)

func testHeader() Header {
	return Header{
		KeystoreVersion: "keystore test",
		ClusterID:       0xfeedface12345678,
		NodeID:          0x1234,
		NodeName:        "n2",
		Index:           4242,
		Term:            7,
		ConfState:       ConfState{Voters: []uint64{1, 2, 0xffffffffffffffff}, Learners: []uint64{9}},
		Members: []Member{
			{ID: 1, Name: "n1", PeerAddress: "10.0.0.1:7101", ClientAddress: "10.0.0.1:7001"},
			{ID: 9, Name: "n9", Learner: true},
		},
		LogTime:      time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Records:      3,
		CreatedAt:    time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
		Linearizable: true,
		Payload:      PayloadKSS2,
	}
}

// makeBackup returns a backup of payload, written in writes of random
// sizes.
func makeBackup(t *testing.T, h Header, payload []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, h)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for p := payload; len(p) > 0; {
		n := min(len(p), 1+rng.IntN(100_000))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func readAll(file []byte, r func(io.Reader) io.Reader) (Header, []byte, error) {
	br, err := NewReader(r(bytes.NewReader(file)))
	if err != nil {
		return Header{}, nil, err
	}
	got, err := io.ReadAll(br)
	return br.Header(), got, err
}

func TestRoundTrip(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+eof": iotest.DataErrReader,
	}
	for _, size := range []int{0, 1, TrailerLen - 1, TrailerLen, TrailerLen + 1, readChunk, 3*readChunk + 17} {
		payload := randomPayload(size)
		file := makeBackup(t, testHeader(), payload)
		for name, wrap := range readers {
			if name == "one byte" && size > readChunk {
				continue // slow, and nothing new
			}
			h, got, err := readAll(file, wrap)
			if err != nil {
				t.Fatalf("%d bytes, %s reader: %v", size, name, err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%d bytes, %s reader: payload differs (got %d bytes)", size, name, len(got))
			}
			if want := testHeader(); !reflect.DeepEqual(h, want) {
				t.Fatalf("header: got %+v; want %+v", h, want)
			}
		}
		sum, err := Verify(bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		if sum.Size != int64(len(file)) || sum.PayloadBytes != uint64(size) {
			t.Fatalf("Verify: size %d, payload %d; want %d, %d", sum.Size, sum.PayloadBytes, len(file), size)
		}
	}
}

// TestDamageRefused: every truncation and every flipped byte of a backup
// is refused, with ErrCorrupt (or ErrNotBackup / ErrNewerFormat for the
// first bytes), and never reads to io.EOF.
func TestDamageRefused(t *testing.T) {
	payload := randomPayload(1200)
	file := makeBackup(t, testHeader(), payload)
	check := func(what string, damaged []byte) {
		t.Helper()
		_, _, err := readAll(damaged, func(r io.Reader) io.Reader { return r })
		if err == nil {
			t.Fatalf("%s: read whole without an error", what)
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotBackup) && !errors.Is(err, ErrNewerFormat) {
			t.Fatalf("%s: got %v; want ErrCorrupt, ErrNotBackup or ErrNewerFormat", what, err)
		}
		if _, verr := Verify(bytes.NewReader(damaged)); verr == nil {
			t.Fatalf("%s: Verify passed", what)
		}
	}
	for n := 0; n < len(file); n++ {
		check("truncated to "+strconv.Itoa(n), file[:n])
	}
	check("one byte more", append(bytes.Clone(file), 0))
	check("a trailer more", append(bytes.Clone(file), file[len(file)-TrailerLen:]...))
	for i := range file {
		for _, bit := range []byte{0x01, 0x80} {
			d := bytes.Clone(file)
			d[i] ^= bit
			check("bit flipped at "+strconv.Itoa(i), d)
		}
	}
}

func TestWrongMagicAndNewerVersionRefused(t *testing.T) {
	file := makeBackup(t, testHeader(), randomPayload(100))
	d := bytes.Clone(file)
	copy(d, "KSBACKUQ")
	if _, _, err := readAll(d, func(r io.Reader) io.Reader { return r }); !errors.Is(err, ErrNotBackup) {
		t.Fatalf("wrong magic: got %v; want ErrNotBackup", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte("hello"))); !errors.Is(err, ErrNotBackup) {
		t.Fatalf("a short other file: got %v; want ErrNotBackup", err)
	}
	d = bytes.Clone(file)
	binary.BigEndian.PutUint32(d[8:12], FormatVersion+1)
	if _, _, err := readAll(d, func(r io.Reader) io.Reader { return r }); !errors.Is(err, ErrNewerFormat) {
		t.Fatalf("newer version: got %v; want ErrNewerFormat", err)
	}
	h := testHeader()
	h.Payload = "KSS3"
	if _, _, err := readAll(makeBackup(t, h, nil), func(r io.Reader) io.Reader { return r }); !errors.Is(err, ErrNewerFormat) {
		t.Fatalf("newer payload: got %v; want ErrNewerFormat", err)
	}
	d = bytes.Clone(file)
	binary.BigEndian.PutUint32(d[12:16], MaxHeaderBytes+1)
	if _, err := NewReader(bytes.NewReader(d)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("huge header length: got %v; want ErrCorrupt", err)
	}
}

// TestSaveFile: SaveFile leaves the verified file in place and no .part;
// a failing or damaging fill leaves the old file untouched and no .part.
func TestSaveFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.ksbak")
	file := makeBackup(t, testHeader(), randomPayload(10_000))
	sum, err := SaveFile(path, func(w io.Writer) error { _, err := w.Write(file); return err })
	if err != nil {
		t.Fatal(err)
	}
	if sum.Size != int64(len(file)) || sum.Header.Index != 4242 {
		t.Fatalf("summary %+v", sum)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("file differs (%v)", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v (%v); want 0600", fi.Mode(), err)
	}
	for name, fill := range map[string]func(w io.Writer) error{
		"truncated": func(w io.Writer) error { _, err := w.Write(file[:len(file)-1]); return err },
		"fails":     func(w io.Writer) error { _, _ = w.Write(file[:100]); return errors.New("connection lost") },
	} {
		if _, err := SaveFile(path, fill); err == nil {
			t.Fatalf("%s: SaveFile succeeded", name)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, file) {
			t.Fatalf("%s: the earlier file was changed", name)
		}
		if _, err := os.Stat(path + PartSuffix); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %s left behind (%v)", name, PartSuffix, err)
		}
	}
}
