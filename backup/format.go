package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"
)

// FormatVersion is the version of the file format this package writes, and
// the newest it reads. Raise it with any change an older reader would
// misread.
const FormatVersion = 1

// MaxHeaderBytes bounds the header a reader accepts before it allocates it.
const MaxHeaderBytes = 1 << 20

// PayloadKSS2 names the payload format of every backup written now:
// storage's snapshot stream (storage/snapstream.go).
const PayloadKSS2 = "KSS2"

const (
	magic        = "KSBACKUP"
	trailerMagic = "KSBKTAIL"
	// prefixLen is the magic, the version and the header length.
	prefixLen = 16
	// TrailerLen is the length of the trailer: its magic, the payload
	// length and the SHA-256.
	TrailerLen = 8 + 8 + sha256.Size
)

// Errors of reading a backup; errors.Is tells them apart.
var (
	// ErrNotBackup: the file does not start with a backup's magic.
	ErrNotBackup = errors.New("backup: not a keystore backup file")
	// ErrNewerFormat: the file's format version is newer than this binary
	// reads; use a newer keystore.
	ErrNewerFormat = errors.New("backup: written in a newer format")
	// ErrCorrupt: the file is damaged or truncated (a checksum, length or
	// header check failed). Never restore from it.
	ErrCorrupt = errors.New("backup: damaged")
)

// Header describes a backup: which state it holds and where it came from.
// IDs are JSON strings (a JSON number cannot hold every uint64).
type Header struct {
	// KeystoreVersion is the version of the node that wrote the backup
	// (version.Info's one-line form).
	KeystoreVersion string `json:"keystore_version"`
	// ClusterID is the cluster backed up; NodeID and NodeName the node that
	// served the backup.
	ClusterID uint64 `json:"cluster_id,string"`
	NodeID    uint64 `json:"node_id,string"`
	NodeName  string `json:"node_name"`
	// Index and Term are the applied index the state is at and its term:
	// the state holds the effect of every entry up to Index, none after.
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// ConfState and Members are the Raft configuration and the members as
	// of Index (the old cluster's: a restore replaces them).
	ConfState ConfState `json:"conf_state"`
	Members   []Member  `json:"members"`
	// LogTime is the state's log time at Index: expiry resumes from it
	// after a restore.
	LogTime time.Time `json:"log_time"`
	// Records is the number of records in the state (expired but not yet
	// swept included).
	Records uint64 `json:"records"`
	// CreatedAt is when the node began the backup, by its clock.
	CreatedAt time.Time `json:"created_at"`
	// Linearizable says a ReadIndex round preceded the backup: it holds
	// every write acknowledged before the backup began.
	Linearizable bool `json:"linearizable"`
	// Payload names the payload's format (PayloadKSS2).
	Payload string `json:"payload"`
}

// ConfState is raft's ConfState, by value.
type ConfState struct {
	Voters         []uint64 `json:"voters,omitempty"`
	Learners       []uint64 `json:"learners,omitempty"`
	VotersOutgoing []uint64 `json:"voters_outgoing,omitempty"`
	LearnersNext   []uint64 `json:"learners_next,omitempty"`
	AutoLeave      bool     `json:"auto_leave,omitempty"`
}

// Member is a member of the backed-up cluster, as its log knew it.
type Member struct {
	ID            uint64 `json:"id,string"`
	Name          string `json:"name"`
	PeerAddress   string `json:"peer_address,omitempty"`
	ClientAddress string `json:"client_address,omitempty"`
	Learner       bool   `json:"learner,omitempty"`
}

// Writer writes a backup: NewWriter writes the magic and the header, Write
// the payload, Close the trailer. It buffers nothing; the caller buffers w
// if it wants to.
type Writer struct {
	w       io.Writer
	h       hash.Hash
	payload uint64
	err     error
	closed  bool
}

// NewWriter writes the start of a backup described by h to w.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if h.Payload == "" {
		h.Payload = PayloadKSS2
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("backup: header: %w", err)
	}
	if len(hb) > MaxHeaderBytes {
		return nil, fmt.Errorf("backup: header of %d bytes is larger than %d", len(hb), MaxHeaderBytes)
	}
	bw := &Writer{w: w, h: sha256.New()}
	prefix := make([]byte, 0, prefixLen+len(hb))
	prefix = append(prefix, magic...)
	prefix = binary.BigEndian.AppendUint32(prefix, FormatVersion)
	prefix = binary.BigEndian.AppendUint32(prefix, uint32(len(hb)))
	prefix = append(prefix, hb...)
	if err := bw.emit(prefix); err != nil {
		return nil, err
	}
	return bw, nil
}

func (w *Writer) emit(b []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.w.Write(b); err != nil {
		w.err = err
		return err
	}
	_, _ = w.h.Write(b)
	return nil
}

// Write appends payload bytes.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("backup: write after Close")
	}
	if err := w.emit(p); err != nil {
		return 0, err
	}
	w.payload += uint64(len(p))
	return len(p), nil
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	t := make([]byte, 0, TrailerLen)
	t = append(t, trailerMagic...)
	t = binary.BigEndian.AppendUint64(t, w.payload)
	if err := w.emit(t); err != nil {
		return err
	}
	if _, err := w.w.Write(w.h.Sum(nil)); err != nil {
		w.err = err
	}
	return w.err
}

// Reader reads a backup: NewReader reads and checks its start, Read
// returns the payload, and io.EOF only once the trailer proved the whole
// file intact (ErrCorrupt otherwise). Until then, what Read returned is
// unproven: a consumer must not act on it before io.EOF (keystored restore
// stages the state and installs it only after).
type Reader struct {
	r           io.Reader
	header      Header
	h           hash.Hash
	buf         []byte // read from r, not yet returned; its last TrailerLen bytes may be the trailer
	start       int    // buf[start:] is unread
	payload     uint64
	eof         bool // r returned io.EOF
	err         error
	version     uint32
	headerBytes int // the magic's, the version's and the header's
}

// readChunk is how much Reader asks of the underlying reader at a time.
const readChunk = 256 << 10

// NewReader reads the start of a backup from r and checks it.
func NewReader(r io.Reader) (*Reader, error) {
	br := &Reader{r: r, h: sha256.New()}
	var prefix [prefixLen]byte
	if n, err := io.ReadFull(r, prefix[:]); err != nil {
		if n >= len(magic) && string(prefix[:len(magic)]) == magic {
			return nil, fmt.Errorf("%w: truncated in its header", ErrCorrupt)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w (%d bytes)", ErrNotBackup, n)
		}
		return nil, err
	}
	if string(prefix[:len(magic)]) != magic {
		return nil, ErrNotBackup
	}
	version := binary.BigEndian.Uint32(prefix[8:12])
	switch {
	case version > FormatVersion:
		return nil, fmt.Errorf("%w: format %d; this binary reads up to %d: restore it with a newer keystore", ErrNewerFormat, version, FormatVersion)
	case version == 0:
		return nil, fmt.Errorf("%w: format version 0", ErrCorrupt)
	}
	n := binary.BigEndian.Uint32(prefix[12:16])
	if n == 0 || n > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header length %d", ErrCorrupt, n)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(r, hb); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: truncated in its header", ErrCorrupt)
		}
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(hb))
	if err := dec.Decode(&br.header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if br.header.Payload != PayloadKSS2 {
		return nil, fmt.Errorf("%w: payload format %q; this binary reads %q", ErrNewerFormat, br.header.Payload, PayloadKSS2)
	}
	if br.header.Index == 0 || br.header.Term == 0 {
		return nil, fmt.Errorf("%w: header names index %d, term %d", ErrCorrupt, br.header.Index, br.header.Term)
	}
	_, _ = br.h.Write(prefix[:])
	_, _ = br.h.Write(hb)
	br.headerBytes = prefixLen + len(hb)
	br.version = version
	return br, nil
}

// Header returns the backup's header. NB: it is checked only once Read
// returned io.EOF (the checksum covers it).
func (r *Reader) Header() Header { return r.header }

// Read returns payload bytes.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if r.err != nil {
			return 0, r.err
		}
		// Everything but the last TrailerLen bytes seen is payload.
		if avail := len(r.buf) - r.start - TrailerLen; avail > 0 {
			n := copy(p, r.buf[r.start:r.start+avail])
			_, _ = r.h.Write(p[:n])
			r.start += n
			r.payload += uint64(n)
			return n, nil
		}
		if r.eof {
			r.err = r.checkTrailer()
			continue
		}
		r.fill()
	}
}

// fill reads more of the file into buf, keeping the unread bytes.
func (r *Reader) fill() {
	if r.start > 0 {
		r.buf = r.buf[:copy(r.buf, r.buf[r.start:])]
		r.start = 0
	}
	if cap(r.buf) < readChunk+TrailerLen {
		nb := make([]byte, len(r.buf), readChunk+TrailerLen)
		copy(nb, r.buf)
		r.buf = nb
	}
	n, err := r.r.Read(r.buf[len(r.buf):cap(r.buf)])
	r.buf = r.buf[:len(r.buf)+n]
	switch {
	case errors.Is(err, io.EOF):
		r.eof = true
	case err != nil:
		r.err = err
	}
}

// checkTrailer is called at the end of the file, with the trailer (if the
// file is whole) in buf.
func (r *Reader) checkTrailer() error {
	t := r.buf[r.start:]
	if len(t) != TrailerLen || string(t[:8]) != trailerMagic {
		return fmt.Errorf("%w: truncated (no trailer at its end)", ErrCorrupt)
	}
	_, _ = r.h.Write(t[:16])
	if sum := r.h.Sum(nil); !bytes.Equal(sum, t[16:]) {
		return fmt.Errorf("%w: SHA-256 mismatch", ErrCorrupt)
	}
	if got := binary.BigEndian.Uint64(t[8:16]); got != r.payload {
		return fmt.Errorf("%w: trailer says %d payload bytes; read %d", ErrCorrupt, got, r.payload)
	}
	return io.EOF
}

// Size returns the bytes of the file read so far, the trailer included
// once Read returned io.EOF.
func (r *Reader) Size() int64 {
	n := int64(r.headerBytes) + int64(r.payload)
	if errors.Is(r.err, io.EOF) {
		n += TrailerLen
	}
	return n
}

// PayloadBytes returns the payload bytes read so far.
func (r *Reader) PayloadBytes() uint64 { return r.payload }
