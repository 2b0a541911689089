package worker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// The isolation protocol: frames of a 4-byte big-endian length followed by
// that many bytes of JSON, one message per frame, over two pipes (fd 3 the
// worker → child direction, fd 4 child → worker).

// maxFrame bounds one frame; a longer length prefix means the peer is
// writing garbage, and the connection is dropped.
const maxFrame = 64 << 20

// Message types.
const (
	msgReady    = "ready"    // child → worker: started, with its pid
	msgRun      = "run"      // worker → child: run a task
	msgRevoke   = "revoke"   // worker → child: terminate the running task
	msgBeat     = "beat"     // child → worker: Heartbeat()
	msgLease    = "lease"    // child → worker: ExtendLease(d)
	msgProgress = "progress" // child → worker: Progress(p, data)
	msgResult   = "result"   // child → worker: the task's outcome
)

// frameMsg is every message of the protocol (unused fields are omitted).
type frameMsg struct {
	T   string `json:"t"`
	PID int    `json:"pid,omitempty"`
	// Task fields (run).
	ID        string          `json:"id,omitempty"`
	Name      string          `json:"name,omitempty"`
	Queue     string          `json:"queue,omitempty"`
	Attempt   int             `json:"attempt,omitempty"`
	Args      json.RawMessage `json:"args,omitempty"`
	TimeLimit time.Duration   `json:"timeLimit,omitempty"`
	// revoke
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"`
	// lease
	Lease time.Duration `json:"lease,omitempty"`
	// progress
	Progress float64         `json:"progress,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	// result
	OK      bool            `json:"ok,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
	Error   string          `json:"error,omitempty"`
	NoRetry bool            `json:"noRetry,omitempty"`
	Revoked bool            `json:"revoked,omitempty"`
}

// frameWriter writes frames; safe for concurrent use.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) write(m frameMsg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err = f.w.Write(append(frame, b...))
	return err
}

// frameReader reads frames.
type frameReader struct {
	r *bufio.Reader
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: bufio.NewReaderSize(r, 64<<10)} }

// read returns the next message, io.EOF at a clean end, or an error that
// names what was wrong with the bytes.
func (f *frameReader) read() (frameMsg, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		return frameMsg{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxFrame {
		return frameMsg{}, fmt.Errorf("protocol error: frame length %d (bytes %x) out of range", n, hdr)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f.r, buf); err != nil {
		return frameMsg{}, fmt.Errorf("protocol error: short frame: %w", err)
	}
	var m frameMsg
	if err := json.Unmarshal(buf, &m); err != nil {
		return frameMsg{}, fmt.Errorf("protocol error: frame is not JSON: %v", err)
	}
	if m.T == "" {
		return frameMsg{}, fmt.Errorf("protocol error: frame without a type")
	}
	return m, nil
}

// pump reads frames onto msgs until a read fails, then sends the error on
// errc and closes msgs.
func (f *frameReader) pump(msgs chan<- frameMsg, errc chan<- error) {
	for {
		m, err := f.read()
		if err != nil {
			errc <- err
			close(msgs)
			return
		}
		msgs <- m
	}
}
