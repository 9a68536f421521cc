package raftnode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
	"testing/iotest"

	"go.etcd.io/raft/v3/raftpb"
)

// The frame targets speak for node fuzzSelf, whose members are
// fuzzMembers; a connection's sender is picked from fuzzSenders, which
// adds the node itself, a stranger and 0.
const fuzzSelf = 2

var (
	fuzzMembers = map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
	fuzzSenders = []uint64{1, 3, fuzzSelf, 4, 0}
)

// frameSeeds returns streams of frames as a peer sends them, from node 1,
// and some a peer must refuse.
func frameSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	frame := func(msgs ...raftpb.Message) []byte {
		b, err := PeerFrame(msgs...)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	hb := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: fuzzSelf, Term: 3, Commit: 5}
	app := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: fuzzSelf, Term: 3, Index: 4, LogTerm: 3, Commit: 4,
		Entries: []raftpb.Entry{{Term: 3, Index: 5, Data: []byte("command")}, {Term: 3, Index: 6, Type: raftpb.EntryConfChange}}}
	vote := raftpb.Message{Type: raftpb.MsgVote, From: 1, To: fuzzSelf, Term: 4, Index: 6, LogTerm: 3}
	snap := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: fuzzSelf, Term: 3, Snapshot: &raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 9, Term: 3}}}
	forged := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 3, To: fuzzSelf, Term: 9}
	misaddressed := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 3, Term: 9}
	good := frame(hb, app, vote)
	header := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }
	return [][]byte{
		good,
		append(append(frame(hb), frame(app)...), frame()...),
		frame(hb, snap),
		frame(forged),
		frame(misaddressed, hb),
		good[:len(good)-1],
		append(header(60<<20), "not all there"...),
		header(MaxMessageBytes + 1),
		header(5),                           // a header and nothing after it
		append(header(3), 0x05, 0x08, 0x01), // a message cut inside the frame
		append(header(2), 0x00, 0x00),       // two empty messages: To 0
		{},
	}
}

// FuzzReadFrame: readFrame never panics; it refuses a length over the
// limit before reading on, reads back exactly the bytes of a whole frame,
// fails on a cut one, and never holds more memory than the data that
// arrived plus one chunk (frameChunk), however large the length it was
// announced (and whatever buffer it was handed to reuse).
func FuzzReadFrame(f *testing.F) {
	for i, s := range frameSeeds(f) {
		f.Add(s, uint32(MaxMessageBytes), uint16(i*7), i%2 == 0)
	}
	f.Add(frameSeeds(f)[0], uint32(10), uint16(0), false)
	f.Fuzz(func(t *testing.T, stream []byte, limit uint32, reuse uint16, halves bool) {
		lim := int(min(limit, MaxMessageBytes))
		var r io.Reader = bytes.NewReader(stream)
		if halves {
			r = iotest.HalfReader(r) // data arriving in pieces
		}
		buf := make([]byte, 0, reuse)
		bound := max(cap(buf), len(stream)+frameChunk)
		rest := stream
		for {
			in := buf
			var err error
			buf, err = readFrame(r, buf, lim)
			if cap(buf) > bound {
				t.Fatalf("readFrame holds %d bytes after %d arrived; want at most %d", cap(buf), len(stream), bound)
			}
			if len(rest) < 4 {
				if err == nil {
					t.Fatalf("readFrame read a frame from %d bytes; want a refusal", len(rest))
				}
				return
			}
			size := int(binary.LittleEndian.Uint32(rest))
			switch {
			case size > lim:
				if !errors.Is(err, errFrameTooLarge) {
					t.Fatalf("frame of %d bytes, limit %d: %v; want errFrameTooLarge", size, lim, err)
				}
				if cap(buf) != cap(in) || len(buf) != len(in) {
					t.Fatalf("frame over the limit: buffer went from %d/%d to %d/%d bytes; want it untouched", len(in), cap(in), len(buf), cap(buf))
				}
				return
			case len(rest)-4 < size:
				if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
					t.Fatalf("frame of %d bytes cut at %d: %v; want io.ErrUnexpectedEOF or io.EOF", size, len(rest)-4, err)
				}
				return
			case err != nil:
				t.Fatalf("whole frame of %d bytes: %v", size, err)
			case !bytes.Equal(buf, rest[4:4+size]):
				t.Fatalf("frame of %d bytes read back as %d different bytes", size, len(buf))
			}
			rest = rest[4+size:]
		}
	})
}

// frameLocal is the Local of the frame targets: it records each Step and,
// when fail is set, refuses it as a stopped node does. Its other methods
// are the nil Local's: stepFrame must not call them.
type frameLocal struct {
	Local
	fail  bool
	steps [][]raftpb.Message
}

func (l *frameLocal) Step(msgs []raftpb.Message) error {
	l.steps = append(l.steps, append([]raftpb.Message(nil), msgs...))
	if l.fail {
		return errors.New("stopped")
	}
	return nil
}

// frameVerdict is what stepFrame must do with frame b from node from,
// written out from the protocol (rawpeer.go): the frame's messages if
// every one is whole, decodes, is from from to this node and is not a
// MsgSnap, and from is still a member; ok false otherwise.
func frameVerdict(b []byte, from uint64) (msgs []raftpb.Message, ok bool) {
	if _, member := fuzzMembers[from]; !member || from == fuzzSelf {
		return nil, false
	}
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, false
		}
		var m raftpb.Message
		if err := m.Unmarshal(b[k : k+int(n)]); err != nil {
			return nil, false
		}
		if m.From != from || m.To != fuzzSelf || m.Type == raftpb.MsgSnap {
			return nil, false
		}
		msgs = append(msgs, m)
		b = b[k+int(n):]
	}
	return msgs, true
}

// FuzzStepFrame reads a connection's bytes as serveRaft does, frame by
// frame (readFrame, then stepFrame) until one is refused: nothing panics,
// and each frame is handed to raft whole, in one Step, exactly when every
// message in it is well formed, from the connection's sender (a member) and
// to this node, and no MsgSnap; a refused frame hands raft nothing and ends
// the connection. A Step that fails (the node stopped) ends it too.
func FuzzStepFrame(f *testing.F) {
	for i, s := range frameSeeds(f) {
		f.Add(s, uint8(0), i == 1)
		f.Add(s, uint8(i), false)
	}
	tr := newTCPTransport(fuzzSelf, 77, fuzzMembers, 0, slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, stream []byte, sender uint8, fail bool) {
		from := fuzzSenders[int(sender)%len(fuzzSenders)]
		local := &frameLocal{fail: fail}
		tr.local = local
		r := bytes.NewReader(stream)
		var (
			buf  []byte
			msgs []raftpb.Message
		)
		for frames := 0; ; frames++ {
			var err error
			if buf, err = readFrame(r, buf, MaxMessageBytes); err != nil {
				return
			}
			want, ok := frameVerdict(buf, from)
			msgs, err = tr.stepFrame(buf, from, msgs)
			if !ok {
				if err == nil {
					t.Fatalf("frame %d (%x) from %d: accepted; want refused", frames, buf, from)
				}
				if len(local.steps) != frames {
					t.Fatalf("frame %d (%x) from %d: refused, but raft got %v", frames, buf, from, local.steps[frames:])
				}
				return
			}
			if len(local.steps) != frames+1 {
				t.Fatalf("frame %d (%x) from %d: %d Steps; want one (err %v)", frames, buf, from, len(local.steps)-frames, err)
			}
			got := local.steps[frames]
			if len(got) != len(want) {
				t.Fatalf("frame %d from %d: raft got %d messages; want %d", frames, from, len(got), len(want))
			}
			for i := range want {
				g, _ := got[i].Marshal()
				w, _ := want[i].Marshal()
				if !bytes.Equal(g, w) {
					t.Fatalf("frame %d from %d, message %d: raft got %v; want %v", frames, from, i, got[i], want[i])
				}
			}
			if fail {
				if !errors.Is(err, errPeerStopped) {
					t.Fatalf("frame %d: Step failed, stepFrame returned %v; want errPeerStopped", frames, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("frame %d (%x) from %d: %v; want it stepped", frames, buf, from, err)
			}
		}
	})
}
