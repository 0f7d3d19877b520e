//go:build wasip1

package tinywasm

import (
	"encoding/binary"
	"errors"
	"strings"
	"unicode/utf8"
)

// Request is a full-mode HTTP request (docs/http.md).
type Request struct {
	Method string
	Path   string // the whole path as sent, percent-encoding kept
	Route  string // the target module's name
	Query  string // without "?", "" if none
	Header map[string]string
	Body   []byte
}

// Response is a full-mode answer. A header given twice (Header.Add) is sent once per value.
type Response struct {
	Status int
	Header Header
	Body   []byte
	// Text sends Body as CBOR text instead of bytes (default content-type text/plain).
	Text bool
}

// Header is an ordered list of answer headers.
type Header [][2]string

// Add appends a header.
func (h *Header) Add(name, value string) { *h = append(*h, [2]string{name, value}) }

// Next passes the request on from a middleware, with these headers set on it.
type Next struct{ Header Header }

// Answer is what an HTTP handler returns: *Response, *Next, or nil (204 from a route,
// "pass on unchanged" from a middleware).
type Answer interface{ isAnswer() }

func (*Response) isAnswer() {}
func (*Next) isAnswer()     {}

// JSON is a 200 answer with a JSON body.
func JSON(body []byte) *Response {
	return &Response{Status: 200, Header: Header{{"content-type", "application/json"}}, Body: body}
}

// TextResponse is an answer with a text body.
func TextResponse(status int, body string) *Response {
	return &Response{Status: status, Body: []byte(body), Text: true}
}

var (
	onHTTP   func(*Request) Answer
	onCompat func(method, path string) (body string, ok bool)
)

// HandleHTTP registers the full-mode handler (export handle_http).
func HandleHTTP(f func(*Request) Answer) { onHTTP = f }

// Handle registers the compat-mode handler (export handle): the body text, or ok=false for
// no answer.
func Handle(f func(method, path string) (body string, ok bool)) { onCompat = f }

//go:wasmexport handle_http
func hostHandleHTTP(ptr, n uint32) uint64 {
	if onHTTP == nil {
		if onCompat == nil {
			return encodeAnswer(TextResponse(404, "this module has no HTTP handler\n"))
		}
		method, path := compatRequest(view(ptr, n))
		body, ok := onCompat(method, path)
		if !ok {
			return 0
		}
		return encodeAnswer(TextResponse(200, body))
	}
	request, err := ParseRequest(view(ptr, n))
	if err != nil {
		return encodeAnswer(TextResponse(400, "unreadable request\n"))
	}
	return encodeAnswer(onHTTP(request))
}

//go:wasmexport handle
func hostHandle(ptr, n uint32) uint32 {
	if onCompat == nil {
		return 0
	}
	method, path := compatRequest(view(ptr, n))
	body, ok := onCompat(method, path)
	if !ok {
		return 0
	}
	return bytesPtr(hold("compat", append([]byte(body), 0)))
}

func compatRequest(b []byte) (string, string) {
	parts := strings.SplitN(string(b), "\n", 3)
	if len(parts) < 2 {
		return "", ""
	}
	return parts[0], parts[1]
}

func encodeAnswer(a Answer) uint64 {
	var w []byte
	switch a := a.(type) {
	case *Response:
		if a == nil {
			return 0
		}
		w = cborHead(w, 5, uint64(1+b2i(len(a.Header) > 0)+b2i(a.Body != nil)))
		w = cborText(w, "status")
		w = cborHead(w, 0, uint64(a.Status))
		if len(a.Header) > 0 {
			w = cborText(w, "headers")
			w = cborHeaders(w, a.Header)
		}
		if a.Body != nil {
			w = cborText(w, "body")
			if a.Text && utf8.Valid(a.Body) {
				w = cborHead(w, 3, uint64(len(a.Body)))
			} else {
				w = cborHead(w, 2, uint64(len(a.Body)))
			}
			w = append(w, a.Body...)
		}
	case *Next:
		if a == nil {
			return 0
		}
		w = cborHead(w, 5, uint64(1+b2i(len(a.Header) > 0)))
		w = cborText(w, "next")
		w = append(w, 0xf5)
		if len(a.Header) > 0 {
			w = cborText(w, "headers")
			w = cborHeaders(w, a.Header)
		}
	default:
		return 0
	}
	return Pack(hold("http", w))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func cborHeaders(w []byte, h Header) []byte {
	var names []string
	values := map[string][]string{}
	for _, kv := range h {
		name := strings.ToLower(kv[0])
		if _, seen := values[name]; !seen {
			names = append(names, name)
		}
		values[name] = append(values[name], kv[1])
	}
	w = cborHead(w, 5, uint64(len(names)))
	for _, name := range names {
		w = cborText(w, name)
		if len(values[name]) > 1 {
			w = cborHead(w, 4, uint64(len(values[name])))
		}
		for _, v := range values[name] {
			w = cborText(w, v)
		}
	}
	return w
}

func cborHead(w []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(w, m|byte(n))
	case n < 1<<8:
		return append(w, m|24, byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(w, m|25), uint16(n))
	case n < 1<<32:
		return binary.BigEndian.AppendUint32(append(w, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(w, m|27), n)
}

func cborText(w []byte, s string) []byte { return append(cborHead(w, 3, uint64(len(s))), s...) }

var errMalformed = errors.New("malformed CBOR request")

type reader struct {
	b  []byte
	at int
}

func (r *reader) head() (byte, uint64, error) {
	if r.at >= len(r.b) {
		return 0, 0, errMalformed
	}
	first := r.b[r.at]
	r.at++
	info := first & 31
	if info < 24 {
		return first >> 5, uint64(info), nil
	}
	if info > 27 {
		return 0, 0, errMalformed
	}
	size := 1 << (info - 24)
	if r.at+size > len(r.b) {
		return 0, 0, errMalformed
	}
	var n uint64
	for _, c := range r.b[r.at : r.at+size] {
		n = n<<8 | uint64(c)
	}
	r.at += size
	return first >> 5, n, nil
}

func (r *reader) take(major byte) ([]byte, error) {
	m, n, err := r.head()
	if err != nil || m != major || n > uint64(len(r.b)-r.at) {
		return nil, errMalformed
	}
	out := r.b[r.at : r.at+int(n)]
	r.at += int(n)
	return out, nil
}

func (r *reader) text() (string, error) {
	b, err := r.take(3)
	return string(b), err
}

func (r *reader) skip() error {
	m, n, err := r.head()
	if err != nil {
		return err
	}
	switch m {
	case 2, 3:
		if n > uint64(len(r.b)-r.at) {
			return errMalformed
		}
		r.at += int(n)
	case 4, 5:
		items := n * uint64(1+b2i(m == 5))
		for i := uint64(0); i < items; i++ {
			if err := r.skip(); err != nil {
				return err
			}
		}
	case 6:
		return r.skip()
	}
	return nil
}

// ParseRequest reads the CBOR request map (the data is copied).
func ParseRequest(b []byte) (*Request, error) {
	r := &reader{b: b}
	m, pairs, err := r.head()
	if err != nil || m != 5 {
		return nil, errMalformed
	}
	req := &Request{Header: map[string]string{}}
	for i := uint64(0); i < pairs; i++ {
		key, err := r.text()
		if err != nil {
			return nil, err
		}
		switch key {
		case "method":
			req.Method, err = r.text()
		case "path":
			req.Path, err = r.text()
		case "route":
			req.Route, err = r.text()
		case "query":
			req.Query, err = r.text()
		case "body":
			var body []byte
			body, err = r.take(2)
			req.Body = append([]byte(nil), body...)
		case "headers":
			var count uint64
			if m, count, err = r.head(); err == nil && m != 5 {
				err = errMalformed
			}
			for j := uint64(0); err == nil && j < count; j++ {
				var name, value string
				if name, err = r.text(); err == nil {
					value, err = r.text()
					req.Header[name] = value
				}
			}
		default:
			err = r.skip()
		}
		if err != nil {
			return nil, err
		}
	}
	return req, nil
}
