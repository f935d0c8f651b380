//! A small blocking HTTP/1.1 client for etcd's JSON gateway: JSON POSTs
//! over one kept-alive TCP connection per client, as a gRPC client keeps
//! its channel, so that a measured request is one round trip and no
//! connection setup. It understands what Go's `net/http` answers: a status
//! line, headers, and a body framed by `Content-Length` or chunked. Sizes
//! are bounded; anything else is an error and closes the connection (the
//! next request opens a new one).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The longest status or header line accepted.
const LINE_BYTES_MAX: u64 = 8 << 10;
/// The largest response body accepted (etcd's answers are a few hundred
/// bytes).
const BODY_BYTES_MAX: usize = 1 << 20;
/// The most header lines accepted.
const HEADERS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: malformed response: {what}")]
    Malformed { addr: SocketAddr, what: String },
    #[error("{addr}: HTTP {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// One server's address and, when open, the connection to it.
pub struct HttpConn {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<BufReader<TcpStream>>,
}

impl HttpConn {
    /// A client of `addr`; `timeout` limits connecting and each read and
    /// write. Connects on the first request.
    pub fn new(addr: SocketAddr, timeout: Duration) -> HttpConn {
        HttpConn {
            addr,
            timeout,
            stream: None,
        }
    }

    /// POSTs `body` (JSON) to `path`; the response body when the status
    /// is 200. A transport or framing error closes the connection.
    pub fn post_json(&mut self, path: &str, body: &[u8]) -> Result<Vec<u8>, HttpError> {
        let result = self.exchange(path, body);
        if matches!(
            result,
            Err(HttpError::Io { .. } | HttpError::Malformed { .. })
        ) {
            self.stream = None;
        }
        let (status, body) = result?;
        if status == 200 {
            Ok(body)
        } else {
            Err(HttpError::Status {
                addr: self.addr,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            })
        }
    }

    fn exchange(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let addr = self.addr;
        let io = |source| HttpError::Io { addr, source };
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(connect(addr, self.timeout)?),
        };
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream.get_mut().write_all(&request).map_err(io)?;
        let malformed = |what: String| HttpError::Malformed { addr, what };

        let status_line = read_line(stream).map_err(io)?;
        let status = parse_status(&status_line)
            .ok_or_else(|| malformed(format!("status line {:?}", truncate(&status_line))))?;
        let mut length = None;
        let (mut chunked, mut close) = (false, false);
        for n in 0.. {
            if n == HEADERS_MAX {
                return Err(malformed(format!("more than {HEADERS_MAX} headers")));
            }
            let line = read_line(stream).map_err(io)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(malformed(format!("header {:?}", truncate(&line))));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = value
                        .parse::<usize>()
                        .map_err(|_| malformed(format!("Content-Length {value:?}")))?;
                    length = Some(n);
                }
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(stream).map_err(|e| match e {
                Framing::Io(source) => HttpError::Io { addr, source },
                Framing::Bad(what) => malformed(what),
            })?
        } else if let Some(n) = length {
            if n > BODY_BYTES_MAX {
                return Err(malformed(format!("a body of {n} bytes")));
            }
            let mut body = vec![0; n];
            stream.read_exact(&mut body).map_err(io)?;
            body
        } else {
            // Neither: the body runs to the end of the connection.
            let mut body = Vec::new();
            stream
                .by_ref()
                .take(BODY_BYTES_MAX as u64 + 1)
                .read_to_end(&mut body)
                .map_err(io)?;
            close = true;
            body
        };
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<BufReader<TcpStream>, HttpError> {
    let connect_error = |source| HttpError::Connect { addr, source };
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(connect_error)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(connect_error)?;
    Ok(BufReader::new(stream))
}

/// One CRLF-terminated line without its terminator, at most
/// `LINE_BYTES_MAX` bytes.
fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut raw = Vec::new();
    stream
        .by_ref()
        .take(LINE_BYTES_MAX)
        .read_until(b'\n', &mut raw)?;
    if raw.last() != Some(&b'\n') {
        let why = if raw.len() as u64 >= LINE_BYTES_MAX {
            "a line longer than 8 KiB"
        } else {
            "the connection closed mid-response"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    raw.pop();
    if raw.last() == Some(&b'\r') {
        raw.pop();
    }
    String::from_utf8(raw)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a non-UTF-8 line"))
}

fn parse_status(line: &str) -> Option<u16> {
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

enum Framing {
    Io(std::io::Error),
    Bad(String),
}

/// A chunked body (RFC 9112 §7.1), trailers ignored.
fn read_chunked(stream: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Framing> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream).map_err(Framing::Io)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| Framing::Bad(format!("chunk size {:?}", truncate(&line))))?;
        if size == 0 {
            // Trailers, then an empty line.
            while !read_line(stream).map_err(Framing::Io)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > BODY_BYTES_MAX {
            return Err(Framing::Bad(format!(
                "a chunked body over {BODY_BYTES_MAX} bytes"
            )));
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).map_err(Framing::Io)?;
        if !read_line(stream).map_err(Framing::Io)?.is_empty() {
            return Err(Framing::Bad("no CRLF after a chunk".into()));
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server that answers each request with the next
    /// canned response, and the requests it saw.
    fn serve(responses: Vec<&'static str>) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut seen = Vec::new();
            for response in responses {
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.push(format!("{head}{}", String::from_utf8(body).unwrap()));
                reader.get_mut().write_all(response.as_bytes()).unwrap();
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn keeps_one_connection_for_length_and_chunked_bodies() {
        let (addr, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 16\r\n\r\n{\"error\":\"down\"}",
        ]);
        let mut c = HttpConn::new(addr, Duration::from_secs(5));
        assert_eq!(c.post_json("/v3/kv/put", b"{\"k\":1}").unwrap(), b"{}");
        assert_eq!(c.post_json("/v3/kv/put", b"{}").unwrap(), b"{\"a\":1}");
        let err = c.post_json("/v3/kv/put", b"{}").unwrap_err().to_string();
        assert!(err.contains("HTTP 503") && err.contains("down"), "{err}");
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3, "three requests on one connection");
        assert!(
            seen[0].starts_with("POST /v3/kv/put HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].ends_with("\r\n\r\n{\"k\":1}"), "{}", seen[0]);
    }

    #[test]
    fn a_garbled_response_is_an_error_and_the_next_request_reconnects() {
        let (addr, server) = serve(vec!["SMTP ready\r\n\r\n"]);
        let mut c = HttpConn::new(addr, Duration::from_secs(5));
        let err = c.post_json("/v3/kv/put", b"{}").unwrap_err();
        assert!(matches!(err, HttpError::Malformed { .. }), "{err}");
        assert!(c.stream.is_none());
        server.join().unwrap();
        // The server is gone: the next request fails to connect or to read.
        assert!(c.post_json("/v3/kv/put", b"{}").is_err());
    }
}
