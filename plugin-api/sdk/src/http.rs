//! What every `routes` plugin needs to read a request and write an answer: a header by name,
//! a query parameter, a JSON body or a redirect as an `HttpResponse`.

use plugin_api::{
    abi_stable::std_types::{RString, RVec, Tuple2},
    Headers, HttpRequest, HttpResponse,
};
use serde_json::Value;

/// An answer with these headers and body.
pub fn response(status: u16, headers: Vec<(&str, String)>, body: Vec<u8>) -> HttpResponse {
    let headers: Vec<_> = headers.into_iter().map(|(k, v)| Tuple2(RString::from(k), RString::from(v))).collect();
    HttpResponse { status, headers: RVec::from(headers), body: body.into() }
}

/// A JSON answer.
pub fn json(status: u16, body: &Value) -> HttpResponse {
    json_with(status, body, Vec::new())
}

/// A JSON answer with more headers (`Retry-After`, `Set-Cookie`, ...).
pub fn json_with(status: u16, body: &Value, mut headers: Vec<(&str, String)>) -> HttpResponse {
    headers.insert(0, ("content-type", "application/json".to_owned()));
    response(status, headers, body.to_string().into_bytes())
}

/// `302 Found` to `location`.
pub fn redirect(location: String) -> HttpResponse {
    response(302, vec![("location", location)], Vec::new())
}

/// A request header by name (any case), trimmed; an empty one counts as absent.
pub fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    header_in(&request.headers, name)
}

/// A header of `headers` (an `HttpRequest`'s, an `AuthRequest`'s) by name (any case),
/// trimmed; an empty one counts as absent.
pub fn header_in<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.0.eq_ignore_ascii_case(name)).map(|h| h.1.as_str().trim()).filter(|v| !v.is_empty())
}

/// A query string parameter, percent-decoded (`+` is a space).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&redirect_url=%2Fsettings%3Fx%3D1+2", "redirect_url").as_deref(),
            Some("/settings?x=1 2")
        );
        assert_eq!(query_param("flag&b=2", "flag").as_deref(), Some(""));
        assert_eq!(query_param("b=2", "a"), None);
    }

    #[test]
    fn json_answers_carry_their_type_first() {
        let r = json_with(429, &serde_json::json!({ "e": 1 }), vec![("retry-after", "3".to_owned())]);
        let headers: Vec<(String, String)> = r.headers.iter().map(|h| (h.0.to_string(), h.1.to_string())).collect();
        assert_eq!(
            headers,
            [("content-type".to_owned(), "application/json".to_owned()), ("retry-after".to_owned(), "3".to_owned())]
        );
        assert_eq!(&r.body[..], br#"{"e":1}"#);
    }
}
