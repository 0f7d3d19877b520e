//! HTTP for modules (docs/http.md): the full-mode request as a `Request`, the answer as an
//! `Answer`, and the compat mode's text. The CBOR underneath is this file's business.

use std::cell::RefCell;

/// A full-mode request: what `handle_http!` hands the module.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub method: String,
    /// The whole path as sent, percent-encoding kept: `/m/echo/a%20b`.
    pub path: String,
    /// The target module's name.
    pub route: String,
    /// The query string without `?`, `""` if none.
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Read the CBOR request map; `None` if it is not one.
    pub fn parse(data: &[u8]) -> Option<Request> {
        let mut r = Reader { data, at: 0 };
        let mut request = Request::default();
        let pairs = r.head(5)?;
        for _ in 0..pairs {
            let key = r.text()?;
            match key {
                "method" => request.method = r.text()?.to_string(),
                "path" => request.path = r.text()?.to_string(),
                "route" => request.route = r.text()?.to_string(),
                "query" => request.query = r.text()?.to_string(),
                "body" => request.body = r.bytes()?.to_vec(),
                "headers" => {
                    for _ in 0..r.head(5)? {
                        let name = r.text()?.to_string();
                        request.headers.push((name, r.text()?.to_string()));
                    }
                }
                _ => r.skip()?,
            }
        }
        Some(request)
    }

    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What `handle_http!`'s closure returns.
#[derive(Debug, Clone)]
pub enum Answer {
    /// No answer: 204 from a route, "pass on unchanged" from a middleware.
    None,
    /// A response. A header name given twice is sent once per value.
    Respond { status: u16, headers: Vec<(String, String)>, body: Body },
    /// From a middleware: pass the request on with these headers set on it.
    Next { headers: Vec<(String, String)> },
}

#[derive(Debug, Clone)]
pub enum Body {
    None,
    Text(String),
    Bytes(Vec<u8>),
}

impl Answer {
    /// A response with a text body and no headers.
    pub fn text(status: u16, body: &str) -> Answer {
        Answer::Respond { status, headers: Vec::new(), body: Body::Text(body.to_string()) }
    }

    /// A response with `headers` and a byte body.
    pub fn bytes(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        Answer::Respond { status, headers: owned(headers), body: Body::Bytes(body) }
    }

    /// A 200 JSON response: `body` is the JSON text.
    pub fn json(body: String) -> Answer {
        Answer::bytes(200, &[("content-type", "application/json")], body.into_bytes())
    }

    /// Add a header to a response or pass-on.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        if let Answer::Respond { headers, .. } | Answer::Next { headers } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    /// From a middleware: pass the request on with `headers` set.
    pub fn next(headers: &[(&str, &str)]) -> Answer {
        Answer::Next { headers: owned(headers) }
    }
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

thread_local! {
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    static COMPAT: RefCell<Vec<u8>> = RefCell::new(Vec::new());
}

/// `handle_http`'s result for `answer`: the CBOR map, packed (valid until the next call).
pub fn answer(answer: Answer) -> u64 {
    let (next, status, headers, body) = match answer {
        Answer::None => return 0,
        Answer::Respond { status, headers, body } => (false, status, headers, body),
        Answer::Next { headers } => (true, 0, headers, Body::None),
    };
    OUT.with(|out| {
        let mut w = out.borrow_mut();
        w.clear();
        let has_body = !matches!(body, Body::None);
        head(&mut w, 5, 1 + !headers.is_empty() as u64 + has_body as u64);
        if next {
            text(&mut w, "next");
            w.push(0xf5);
        } else {
            text(&mut w, "status");
            head(&mut w, 0, status as u64);
        }
        if !headers.is_empty() {
            text(&mut w, "headers");
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in &headers {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    names.push(name);
                }
            }
            head(&mut w, 5, names.len() as u64);
            for name in names {
                let values: Vec<&str> = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
                    .collect();
                text(&mut w, name);
                if values.len() > 1 {
                    head(&mut w, 4, values.len() as u64);
                }
                for value in values {
                    text(&mut w, value);
                }
            }
        }
        match body {
            Body::None => {}
            Body::Text(body) => {
                text(&mut w, "body");
                text(&mut w, &body);
            }
            Body::Bytes(body) => {
                text(&mut w, "body");
                head(&mut w, 2, body.len() as u64);
                w.extend_from_slice(&body);
            }
        }
        crate::pack(w.as_ptr(), w.len())
    })
}

/// Compat mode: the method and path of `"METHOD\nPATH\n"`.
pub fn compat_request(request: &[u8]) -> (&str, &str) {
    let text = core::str::from_utf8(request).unwrap_or("");
    let mut lines = text.split('\n');
    (lines.next().unwrap_or(""), lines.next().unwrap_or(""))
}

/// Compat mode: `handle`'s result for `body` (NUL-terminated copy; null for no answer).
pub fn compat_answer(body: Option<String>) -> *const u8 {
    match body {
        None => core::ptr::null(),
        Some(body) => COMPAT.with(|out| {
            let mut out = out.borrow_mut();
            out.clear();
            out.extend_from_slice(body.as_bytes());
            out.push(0);
            out.as_ptr()
        }),
    }
}

/// Escape `s` as a JSON string, quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn head(w: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        w.push(m | n as u8);
    } else if n < 0x100 {
        w.extend_from_slice(&[m | 24, n as u8]);
    } else if n < 0x10000 {
        w.push(m | 25);
        w.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n < 0x1_0000_0000 {
        w.push(m | 26);
        w.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        w.push(m | 27);
        w.extend_from_slice(&n.to_be_bytes());
    }
}

fn text(w: &mut Vec<u8>, s: &str) {
    head(w, 3, s.len() as u64);
    w.extend_from_slice(s.as_bytes());
}

/// A reader of definite-length CBOR (the host never sends indefinite lengths).
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// The argument of the next item, which must have major type `major`.
    fn head(&mut self, major: u8) -> Option<u64> {
        let (m, n) = self.any_head()?;
        if m == major {
            Some(n)
        } else {
            None
        }
    }

    fn any_head(&mut self) -> Option<(u8, u64)> {
        let b = self.byte()?;
        let info = b & 31;
        let n = match info {
            0..=23 => info as u64,
            24..=27 => {
                let mut n = 0u64;
                for _ in 0..(1usize << (info - 24)) {
                    n = (n << 8) | self.byte()? as u64;
                }
                n
            }
            _ => return None,
        };
        Some((b >> 5, n))
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.at.checked_add(usize::try_from(n).ok()?)?;
        let slice = self.data.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn text(&mut self) -> Option<&'a str> {
        let n = self.head(3)?;
        core::str::from_utf8(self.take(n)?).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.head(2)?;
        self.take(n)
    }

    fn skip(&mut self) -> Option<()> {
        let (major, n) = self.any_head()?;
        match major {
            2 | 3 => {
                self.take(n)?;
            }
            4 => {
                for _ in 0..n {
                    self.skip()?;
                }
            }
            5 => {
                for _ in 0..n * 2 {
                    self.skip()?;
                }
            }
            6 => self.skip()?,
            _ => {}
        }
        Some(())
    }
}
