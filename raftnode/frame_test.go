package raftnode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// TestReadFrameAllocatesWithTheData: a header announcing a large frame
// makes the receiver allocate only as the data arrives (a stranger's
// header alone once made it allocate up to 512 MiB), a header over the
// limit is refused before any allocation, and whole frames read back.
func TestReadFrameAllocatesWithTheData(t *testing.T) {
	header := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

	// 60 MiB announced, 10 bytes sent.
	in := append(header(60<<20), make([]byte, 10)...)
	buf, err := readFrame(bytes.NewReader(in), nil, MaxMessageBytes)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short frame: %v; want io.ErrUnexpectedEOF", err)
	}
	if cap(buf) > frameChunk {
		t.Fatalf("a 60 MiB header with 10 bytes of data allocated %d bytes; want at most %d", cap(buf), frameChunk)
	}

	// Over the limit: refused from the header.
	_, err = readFrame(bytes.NewReader(header(MaxMessageBytes+1)), nil, MaxMessageBytes)
	if !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("frame over the limit: %v; want errFrameTooLarge", err)
	}

	// Frames of several sizes, one after another, through one buffer.
	var stream []byte
	sizes := []int{0, 5, frameChunk + 7, 3*frameChunk + 1, 12}
	for i, n := range sizes {
		stream = append(stream, header(uint32(n))...)
		stream = append(stream, bytes.Repeat([]byte{byte(i + 1)}, n)...)
	}
	r := bytes.NewReader(stream)
	buf = nil
	for i, n := range sizes {
		if buf, err = readFrame(r, buf, MaxMessageBytes); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if len(buf) != n || (n > 0 && (buf[0] != byte(i+1) || buf[n-1] != byte(i+1))) {
			t.Fatalf("frame %d: got %d bytes; want %d of %d", i, len(buf), n, i+1)
		}
	}
	if _, err := readFrame(r, buf, MaxMessageBytes); err != io.EOF {
		t.Fatalf("after the last frame: %v; want io.EOF", err)
	}
}
