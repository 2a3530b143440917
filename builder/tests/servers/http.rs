// SPDX-License-Identifier: Apache-2.0
//! A small HTTP/1.1 file server on 127.0.0.1 for the fetch tests, with
//! faults on demand: an error status, a body cut half-way, a wrong body.
//! It honours `Range: bytes=N-` (and `If-Range` against its ETag), can
//! demand an Authorization header, and records every request.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one request asks for.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A misbehaviour served instead of (or on the way to) the file.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Announce the full length, send this many bytes, close.
    CutAfter(usize),
}

/// An answer computed from the request.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct Route {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub faults: VecDeque<Fault>,
    /// Serve ranges (with this ETag); false answers every GET in full.
    pub ranges: bool,
    pub etag: Option<String>,
    /// An `Authorization` value the request must carry, and the challenge
    /// sent without it.
    pub auth: Option<(String, String)>,
    pub handler: Option<Handler>,
}

impl Route {
    pub fn file(body: &[u8]) -> Route {
        Route {
            body: body.to_vec(),
            headers: Vec::new(),
            faults: VecDeque::new(),
            ranges: true,
            etag: Some(format!("\"{}\"", &common_sha(body)[..16])),
            auth: None,
            handler: None,
        }
    }

    pub fn handler(f: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Route {
        Route {
            handler: Some(Arc::new(f)),
            ..Route::file(b"")
        }
    }

    pub fn with_faults(mut self, faults: &[Fault]) -> Route {
        self.faults = faults.iter().cloned().collect();
        self
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Route {
        self.headers.push((k.into(), v.into()));
        self
    }
}

fn common_sha(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Request>>,
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Server { addr, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, path: &str, r: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), r);
    }

    /// Replaces a route's body (a republished file: a new ETag too).
    pub fn replace(&self, path: &str, body: &[u8]) {
        let mut routes = self.state.routes.lock().unwrap();
        let r = routes.get_mut(path).unwrap();
        r.etag = Some(format!("\"{}\"", &common_sha(body)[..16]));
        r.body = body.to_vec();
    }

    /// Changes the route at `path`.
    pub fn update(&self, path: &str, f: impl FnOnce(&mut Route)) {
        f(self.state.routes.lock().unwrap().get_mut(path).unwrap());
    }

    pub fn add_faults(&self, path: &str, faults: &[Fault]) {
        self.state
            .routes
            .lock()
            .unwrap()
            .get_mut(path)
            .unwrap()
            .faults
            .extend(faults.iter().cloned());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests for `path` (GET and HEAD).
    pub fn hits(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, st: &State) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    conn.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    // Keep-alive: serve requests until the client closes or a fault cuts.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target
            .split_once('?')
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .unwrap_or((target.clone(), String::new()));
        let req = Request {
            method,
            path,
            query,
            headers,
            body,
        };
        st.log.lock().unwrap().push(req.clone());
        if !respond(&mut out, st, &req) {
            return;
        }
    }
}

/// Writes one response; false when the connection must close.
fn respond(out: &mut TcpStream, st: &State, req: &Request) -> bool {
    let (route, fault) = {
        let mut routes = st.routes.lock().unwrap();
        match routes.get_mut(&req.path) {
            Some(r) => {
                let f = r.faults.pop_front();
                (Some(r.clone()), f)
            }
            None => (None, None),
        }
    };
    let Some(route) = route else {
        return send(out, 404, &[], b"not found\n", None);
    };
    if let Some((want, challenge)) = &route.auth {
        if req.header("authorization") != Some(want.as_str()) {
            return send(
                out,
                401,
                &[("WWW-Authenticate".into(), challenge.clone())],
                b"{}",
                None,
            );
        }
    }
    match fault {
        Some(Fault::Status(code)) => return send(out, code, &[], b"", None),
        Some(Fault::CutAfter(n)) => {
            let body = &route.body;
            let mut headers = route.headers.clone();
            if let Some(e) = &route.etag {
                headers.push(("ETag".into(), e.clone()));
            }
            send(out, 200, &headers, body, Some(n));
            return false;
        }
        None => {}
    }
    if let Some(h) = &route.handler {
        let r = h(req);
        return send(out, r.status, &r.headers, &r.body, None);
    }
    let mut headers = route.headers.clone();
    if let Some(e) = &route.etag {
        headers.push(("ETag".into(), e.clone()));
    }
    let body = &route.body;
    let range = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let if_range_ok = match req.header("if-range") {
        None => true,
        Some(v) => route.etag.as_deref() == Some(v),
    };
    if let (true, Some(start), true) = (route.ranges, range, if_range_ok) {
        if start >= body.len() {
            headers.push(("Content-Range".into(), format!("bytes */{}", body.len())));
            return send(out, 416, &headers, b"", None);
        }
        headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
        ));
        return send(out, 206, &headers, &body[start..], None);
    }
    if req.method == "HEAD" {
        headers.push(("Content-Length".into(), body.len().to_string()));
        return send(out, 200, &headers, b"", Some(0));
    }
    send(out, 200, &headers, body, None)
}

fn send(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    cut: Option<usize>,
) -> bool {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    let has_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let n = cut.unwrap_or(body.len()).min(body.len());
    if out.write_all(&body[..n]).is_err() || out.flush().is_err() {
        return false;
    }
    if cut.is_some() && n < body.len() {
        let _ = out.shutdown(std::net::Shutdown::Both);
        return false;
    }
    true
}
