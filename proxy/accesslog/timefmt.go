package accesslog

import (
	"sync/atomic"
	"time"
)

// stampCache holds the RFC 3339 rendering of one second: formatting a
// time costs about as much as the rest of a line, and consecutive lines
// almost always fall in the same second of the same zone.
type stampCache struct {
	last atomic.Pointer[stamp]
}

// stamps is shared by every line: it only ever holds one second.
var stamps stampCache

type stamp struct {
	sec  int64
	loc  *time.Location
	date string // "2006-01-02T15:04:05"
	zone string // "Z" or "-07:00"
}

// appendRFC3339Nano appends t exactly as t.AppendFormat(b, time.RFC3339Nano)
// would: the fraction with its trailing zeros trimmed, none when zero.
func (c *stampCache) appendRFC3339Nano(b []byte, t time.Time) []byte {
	sec, loc := t.Unix(), t.Location()
	s := c.last.Load()
	if s == nil || s.sec != sec || s.loc != loc {
		whole := t.Truncate(time.Second) // keeps the zone; drops the monotonic reading
		full := whole.Format(time.RFC3339)
		const dateLen = len("2006-01-02T15:04:05")
		if len(full) < dateLen || full[dateLen-3] != ':' {
			// Years outside 0000–9999 do not have the fixed layout.
			return t.AppendFormat(b, time.RFC3339Nano)
		}
		s = &stamp{sec: sec, loc: loc, date: full[:dateLen], zone: full[dateLen:]}
		c.last.Store(s)
	}
	b = append(b, s.date...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, s.zone...)
}

// appendMillis appends d in milliseconds with three decimals (microsecond
// resolution, rounded half up), as strconv.AppendFloat(ms, 'f', 3) would
// without the float conversion.
func appendMillis(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	us := (int64(d) + 500) / 1000
	b = appendUint(b, uint64(us/1000))
	r := us % 1000
	return append(b, '.', byte('0'+r/100), byte('0'+r/10%10), byte('0'+r%10))
}

func appendUint(b []byte, v uint64) []byte {
	var digits [20]byte
	i := len(digits)
	for {
		i--
		digits[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, digits[i:]...)
}
