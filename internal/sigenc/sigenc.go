// Package sigenc is the canonical encoding and HMAC-SHA256 signing shared
// by control messages and stored control records (revokes, pauses). A
// signature covers a domain string (what kind of record, which format
// version) and an ordered list of fields, each length-prefixed, so no two
// different records encode alike and a signature for one kind of record
// is never valid for another.
package sigenc

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"time"
)

// Encode returns the canonical encoding of domain and fields: the domain,
// then each field as an 8-byte big-endian length and its bytes.
func Encode(domain string, fields ...string) []byte {
	n := 8 + len(domain)
	for _, f := range fields {
		n += 8 + len(f)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint64(b, uint64(len(domain)))
	b = append(b, domain...)
	for _, f := range fields {
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// Sign returns the hex HMAC-SHA256 of the canonical encoding under key.
func Sign(key []byte, domain string, fields ...string) string {
	m := hmac.New(sha256.New, key)
	m.Write(Encode(domain, fields...))
	return hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether sig is the signature of domain and fields under
// key, in constant time. An empty or non-hex sig is false.
func Verify(key []byte, sig, domain string, fields ...string) bool {
	if sig == "" {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(Encode(domain, fields...))
	return hmac.Equal(m.Sum(nil), got)
}

// Time encodes t as microseconds since the epoch ("" for the zero time):
// the precision every store keeps, so a record read back from Postgres
// verifies like the one that was written.
func Time(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMicro(), 10)
}

// Bool encodes b as "1" or "0".
func Bool(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Int encodes n in decimal.
func Int(n int64) string { return strconv.FormatInt(n, 10) }
