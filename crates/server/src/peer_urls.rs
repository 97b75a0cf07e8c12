//! The peer URLs of MemberAdd and MemberUpdate, checked before anything is proposed, so that
//! no request can put into the membership a URL that no member could be reached at.
//!
//! The checks are etcd's: `types.NewURLs` (etcd's `client/pkg/types/urls.go`) trims each URL,
//! parses it with Go's `net/url.Parse`, wants the scheme to be http, https, unix or unixs,
//! `net.SplitHostPort` to accept its host and no path; and at least one URL. To them Concord
//! adds what its peer transport needs to dial a URL, where etcd lets through one it would
//! dial in vain or not at all: a port from 1 to 65535 (Go takes any digits, or none), a host,
//! an IPv6 address inside brackets, only http and https (`concord serve` listens on nothing
//! else), a URL the transport's URI parser takes, and bounds on their number and length.
//! Every refusal is etcd's `ErrGRPCMemberBadURLs`.
//!
//! etcd checks MemberAdd's URLs only. MemberUpdate's reach the log unchecked, and every other
//! member panics applying a bad one (etcd 3.4.23: `newURLs [http://127.0.0.1] should never
//! fail`), which loses the quorum. Concord checks both the same way.

use std::fmt;
use std::net::Ipv6Addr;

use tonic::Status;

use crate::errors;

/// Most peer URLs one member may have. etcd bounds them only by the request size; but every
/// URL rides in every MemberList answer, snapshot and membership file, and a member is dialled
/// at its first, so a handful is all anyone uses.
pub const MAX_PEER_URLS: usize = 32;

/// Longest peer URL, in bytes: a DNS name has at most 253, so `https://`, a name and a port
/// fit with room to spare.
pub const MAX_PEER_URL_BYTES: usize = 1024;

/// Why peer URLs were refused. Clients see only etcd's one message; this goes to the log and
/// the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No URL at all (etcd: "no valid URLs given").
    Empty,
    /// More than [`MAX_PEER_URLS`] URLs (Concord's bound).
    TooMany,
    /// A URL longer than [`MAX_PEER_URL_BYTES`] (Concord's bound).
    TooLong,
    /// A control character (Go's `url.Parse` refuses them before any fragment; Concord anywhere).
    ControlCharacter,
    /// No scheme, or a malformed one (Go's `getScheme`; etcd then finds no allowed scheme).
    NoScheme,
    /// A scheme other than http or https (etcd also takes unix and unixs, which Concord cannot serve).
    Scheme,
    /// Not `scheme://host:port` (etcd: `net.SplitHostPort` of the URL's host fails).
    NotHostPort,
    /// A path, even "/" (etcd: "URL must not contain a path").
    Path,
    /// User information Go's `url.Parse` refuses (a character it does not allow, a bad escape).
    Userinfo,
    /// A fragment with a malformed %-escape (Go's `url.Parse`).
    Escape,
    /// A port that is not a number from 1 to 65535 (Go takes any digits, or none).
    Port,
    /// An empty host, or a bracketed one that is not an IPv6 address (Go takes both).
    Host,
    /// A URL the peer transport's URI parser refuses (a space, a non-ASCII host, a %-escape
    /// in the host...), so it could not dial it.
    Unparsable,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Empty => "no peer URL given",
            Refusal::TooMany => "more peer URLs than a member may have",
            Refusal::TooLong => "a peer URL is too long",
            Refusal::ControlCharacter => "a control character in a peer URL",
            Refusal::NoScheme => "a peer URL without a scheme",
            Refusal::Scheme => "a peer URL scheme other than http or https",
            Refusal::NotHostPort => "a peer URL address that is not host:port",
            Refusal::Path => "a path in a peer URL",
            Refusal::Userinfo => "invalid user information in a peer URL",
            Refusal::Escape => "a malformed %-escape in a peer URL",
            Refusal::Port => "a peer URL port that is not a number from 1 to 65535",
            Refusal::Host => "a peer URL without a usable host",
            Refusal::Unparsable => "a peer URL the peer transport cannot parse",
        })
    }
}

/// Checks the peer URLs of a MemberAdd or MemberUpdate request. Answers them as they are to
/// be kept (trimmed, the scheme in lower case, as etcd keeps them), or etcd's error.
pub fn validate(urls: &[String]) -> Result<Vec<String>, Status> {
    check(urls).map_err(|refusal| {
        tracing::debug!("member request refused: {refusal}");
        errors::member_bad_urls()
    })
}

/// The URLs as they are to be kept, or why they are refused.
pub fn check(urls: &[String]) -> Result<Vec<String>, Refusal> {
    if urls.is_empty() {
        return Err(Refusal::Empty);
    }
    if urls.len() > MAX_PEER_URLS {
        return Err(Refusal::TooMany);
    }
    urls.iter().map(|url| check_one(url)).collect()
}

/// One peer URL, as it is to be kept, or why it is refused.
pub fn check_one(url: &str) -> Result<String, Refusal> {
    if url.len() > MAX_PEER_URL_BYTES {
        return Err(Refusal::TooLong);
    }
    // Go's strings.TrimSpace trims what Unicode calls White_Space, as str::trim does.
    let url = url.trim();
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Refusal::ControlCharacter);
    }
    let (before_fragment, fragment) = url.split_once('#').unwrap_or((url, ""));
    if !escapes_are_valid(fragment) {
        return Err(Refusal::Escape);
    }
    let (scheme, rest) = split_scheme(before_fragment)?;
    let scheme = scheme.to_ascii_lowercase();
    // etcd also takes unix and unixs; no Concord member listens on such a URL.
    if scheme != "http" && scheme != "https" {
        return Err(Refusal::Scheme);
    }
    let before_query = rest.split_once('?').map_or(rest, |(before, _)| before);
    let authority = authority(before_query)?;
    let host_port = match authority.rfind('@') {
        Some(at) if userinfo_is_valid(&authority[..at]) => &authority[at + 1..],
        Some(_) => return Err(Refusal::Userinfo),
        None => authority,
    };
    check_port_shape(host_port)?;
    let (host, port) = split_host_port(host_port)?;
    check_port(port)?;
    check_host(host, host_port.starts_with('['))?;
    let kept = format!("{scheme}:{}", &url[scheme.len() + 1..]);
    check_dialable(&kept)?;
    Ok(kept)
}

/// Go's `getScheme`: a letter, then letters, digits, `+`, `-` or `.`, up to the first `:`.
/// Answers the scheme and what follows the colon.
fn split_scheme(url: &str) -> Result<(&str, &str), Refusal> {
    for (i, c) in url.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i > 0 => return Ok((&url[..i], &url[i + 1..])),
            _ => return Err(Refusal::NoScheme),
        }
    }
    Err(Refusal::NoScheme)
}

/// The authority of a URL's part after the scheme (before any query): what follows `//`, which
/// must be there (else Go sees no host, and `net.SplitHostPort("")` fails), and must not be
/// followed by a path.
fn authority(after_scheme: &str) -> Result<&str, Refusal> {
    let after_slashes = after_scheme.strip_prefix("//").ok_or(Refusal::NotHostPort)?;
    match after_slashes.split_once('/') {
        Some(_) => Err(Refusal::Path),
        None => Ok(after_slashes),
    }
}

/// Go's `validUserinfo`, and the %-escapes `url.Parse` then decodes in it.
fn userinfo_is_valid(userinfo: &str) -> bool {
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&c);
    userinfo.bytes().all(allowed) && escapes_are_valid(userinfo)
}

/// Whether every `%` starts an escape of two hex digits, as Go's `unescape` requires.
fn escapes_are_valid(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().filter(|(_, c)| **c == b'%').all(|(i, _)| {
        bytes
            .get(i + 1..i + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Go's `parseHost`: what follows the host (after the closing bracket of an IPv6 literal, else
/// after the last colon) must be nothing or `:` and digits.
fn check_port_shape(host_port: &str) -> Result<(), Refusal> {
    let after_host = if host_port.starts_with('[') {
        let close = host_port.rfind(']').ok_or(Refusal::NotHostPort)?;
        &host_port[close + 1..]
    } else {
        host_port.rfind(':').map_or("", |colon| &host_port[colon..])
    };
    let digits_only = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
    if after_host.is_empty() || after_host.strip_prefix(':').is_some_and(digits_only) {
        Ok(())
    } else {
        Err(Refusal::Port)
    }
}

/// Go's `net.SplitHostPort`: host and port around the last colon, the host of an IPv6 literal
/// without its brackets, no colon in any other host, no stray bracket.
fn split_host_port(host_port: &str) -> Result<(&str, &str), Refusal> {
    let colon = host_port.rfind(':').ok_or(Refusal::NotHostPort)?;
    let (host, after_open, after_close) = if host_port.starts_with('[') {
        let close = host_port.find(']').ok_or(Refusal::NotHostPort)?;
        if close + 1 != colon {
            return Err(Refusal::NotHostPort);
        }
        (&host_port[1..close], 1, close + 1)
    } else {
        let host = &host_port[..colon];
        if host.contains(':') {
            return Err(Refusal::NotHostPort);
        }
        (host, 0, 0)
    };
    if host_port[after_open..].contains('[') || host_port[after_close..].contains(']') {
        return Err(Refusal::NotHostPort);
    }
    Ok((host, &host_port[colon + 1..]))
}

/// Concord's: a port the transport can dial. Go's checks leave digits, or nothing; a number
/// past 65535 would be dialled as port 80, and port 0 reaches nobody.
fn check_port(port: &str) -> Result<(), Refusal> {
    match port.parse::<u16>() {
        Ok(n) if n != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(Refusal::Port),
    }
}

/// Concord's: a host to dial. Go takes an empty one and any text in brackets.
fn check_host(host: &str, bracketed: bool) -> Result<(), Refusal> {
    if host.is_empty() || (bracketed && host.parse::<Ipv6Addr>().is_err()) {
        return Err(Refusal::Host);
    }
    Ok(())
}

/// Concord's: the peer transport dials a URL through tonic, which parses it as an `http::Uri`
/// (an `https` one too, with its scheme swapped); a URL that does not parse so could never be
/// dialled.
fn check_dialable(url: &str) -> Result<(), Refusal> {
    match http::Uri::try_from(url) {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(Refusal::Unparsable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(url: &str) -> Result<String, Refusal> {
        check(&[url.to_string()]).map(|mut kept| kept.remove(0))
    }

    /// URLs etcd 3.4.23's MemberAdd took (checked against a running etcd), and how Concord keeps them.
    #[test]
    fn what_etcd_takes_is_taken() {
        let taken = [
            ("http://127.0.0.1:2380", "http://127.0.0.1:2380"),
            ("https://10.0.0.1:2380", "https://10.0.0.1:2380"),
            ("http://[::1]:2380", "http://[::1]:2380"),
            ("http://example.com:2380", "http://example.com:2380"),
            ("http://my_host-1.example:02380", "http://my_host-1.example:02380"),
            ("  http://127.0.0.1:2380\t\n", "http://127.0.0.1:2380"),
            ("\u{a0}http://127.0.0.1:2380\u{3000}", "http://127.0.0.1:2380"),
            ("HTTP://127.0.0.1:2380", "http://127.0.0.1:2380"),
            ("HttpS://127.0.0.1:2380", "https://127.0.0.1:2380"),
            ("http://127.0.0.1:2380?x=1", "http://127.0.0.1:2380?x=1"),
            ("http://127.0.0.1:2380?", "http://127.0.0.1:2380?"),
            ("http://127.0.0.1:2380#f", "http://127.0.0.1:2380#f"),
            ("http://u:p@127.0.0.1:2380", "http://u:p@127.0.0.1:2380"),
            ("http://u%41@127.0.0.1:2380", "http://u%41@127.0.0.1:2380"),
        ];
        for (given, kept) in taken {
            assert_eq!(verdict(given), Ok(kept.to_string()), "{given:?}");
        }
        let two = ["http://a:1".to_string(), "http://a:1".to_string()];
        assert_eq!(check(&two), Ok(two.to_vec()), "etcd takes a URL twice");
    }

    /// URLs etcd 3.4.23's MemberAdd refused (checked against a running etcd), and Concord's reason.
    #[test]
    fn what_etcd_refuses_is_refused() {
        let refused = [
            ("", Refusal::NoScheme),
            ("   ", Refusal::NoScheme),
            ("127.0.0.1:2380", Refusal::NoScheme),
            ("://127.0.0.1:2380", Refusal::NoScheme),
            ("1http://127.0.0.1:2380", Refusal::NoScheme),
            ("localhost:2380", Refusal::Scheme),
            ("mailto://127.0.0.1:2380", Refusal::Scheme),
            ("ftp://127.0.0.1:2380", Refusal::Scheme),
            ("unix://foo", Refusal::Scheme),
            ("http:127.0.0.1:2380", Refusal::NotHostPort),
            ("http:/127.0.0.1:2380", Refusal::NotHostPort),
            ("http://127.0.0.1", Refusal::NotHostPort),
            ("http://[::1]", Refusal::NotHostPort),
            ("http://[::1", Refusal::NotHostPort),
            ("http://a:b:2380", Refusal::NotHostPort),
            ("http://a[b]:2380", Refusal::NotHostPort),
            ("http://[::1]x:2380", Refusal::Port),
            ("http://127.0.0.1:2380/x", Refusal::Path),
            ("http://127.0.0.1:2380/", Refusal::Path),
            ("http://127.0.0.1:ab", Refusal::Port),
            ("http://127.0.0.1:+80", Refusal::Port),
            ("http://127.0.0.1:2380\0", Refusal::ControlCharacter),
            ("http://127.0.\0.1:2380", Refusal::ControlCharacter),
            ("http://127.0.0.1:23\t80", Refusal::ControlCharacter),
            ("http://127.0.0.1:2380\x7f", Refusal::ControlCharacter),
            ("http://u[x]@127.0.0.1:2380", Refusal::Userinfo),
            ("http://u%zz@127.0.0.1:2380", Refusal::Userinfo),
            ("http://127.0.0.1:2380#%zz", Refusal::Escape),
            ("http://127.0.0.1:2380#%4", Refusal::Escape),
            ("http://127.0 .0.1:2380", Refusal::Unparsable),
            ("http://127.0.0.1%41:2380", Refusal::Unparsable),
        ];
        for (given, why) in refused {
            assert_eq!(verdict(given), Err(why), "{given:?}");
        }
        assert_eq!(check(&[]), Err(Refusal::Empty));
        let one_bad = ["http://127.0.0.1:2380".to_string(), "http://127.0.0.1".to_string()];
        assert_eq!(check(&one_bad), Err(Refusal::NotHostPort));
    }

    /// URLs etcd 3.4.23's MemberAdd took (checked against a running etcd) but no Concord member
    /// could be reached at (or, for a control character in the fragment, that no one means).
    #[test]
    fn what_concord_cannot_dial_is_refused() {
        let refused = [
            ("http://127.0.0.1:99999", Refusal::Port),
            ("http://127.0.0.1:65536", Refusal::Port),
            ("http://127.0.0.1:0", Refusal::Port),
            ("http://127.0.0.1:", Refusal::Port),
            ("http://:2380", Refusal::Host),
            ("http://[]:2380", Refusal::Host),
            ("http://[zz]:2380", Refusal::Host),
            ("http://[fe80::1%25en0]:2380", Refusal::Host),
            ("unixs://bar:1", Refusal::Scheme),
            ("http://ex\u{e4}mple.com:2380", Refusal::Unparsable),
            ("http://127.0.0.1:2380?x y", Refusal::Unparsable),
            ("http://127.0.0.1:2380#\0", Refusal::ControlCharacter),
        ];
        for (given, why) in refused {
            assert_eq!(verdict(given), Err(why), "{given:?}");
        }
        assert_eq!(verdict("http://127.0.0.1:65535"), Ok("http://127.0.0.1:65535".into()));
        assert_eq!(verdict("http://127.0.0.1:1"), Ok("http://127.0.0.1:1".into()));
    }

    #[test]
    fn number_and_length_are_bounded() {
        let host = "a".repeat(MAX_PEER_URL_BYTES - "http://:2380".len());
        let longest = format!("http://{host}:2380");
        assert_eq!(longest.len(), MAX_PEER_URL_BYTES);
        assert_eq!(verdict(&longest), Ok(longest.clone()));
        assert_eq!(verdict(&format!("http://a{host}:2380")), Err(Refusal::TooLong));
        assert_eq!(
            verdict(&format!("http://{}:2380", "a".repeat(1 << 20))),
            Err(Refusal::TooLong)
        );

        let urls = |n: usize| {
            (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 3000 + i))
                .collect::<Vec<_>>()
        };
        assert!(check(&urls(MAX_PEER_URLS)).is_ok());
        assert_eq!(check(&urls(MAX_PEER_URLS + 1)), Err(Refusal::TooMany));
        assert_eq!(check(&urls(1000)), Err(Refusal::TooMany));
    }

    #[test]
    fn no_input_panics_and_what_is_kept_is_kept_again() {
        // URLs put together from good and bad parts, in a fixed pseudo-random order.
        let parts: [&[&str]; 7] = [
            &["", " ", "\u{3000}"],
            &["http", "HTTPS", "unix", "h1", "1h", ""],
            &["://", ":/", "//", ":", ""],
            &["", "u@", "u:p@", "%zz@", "[@", "@"],
            &[
                "127.0.0.1",
                "[::1]",
                "[::1",
                "::1",
                "a",
                "",
                "ex\u{e4}mple",
                "[zz]",
                "a b",
                "%41",
                "]",
            ],
            &[":2380", ":", "", ":99999", ":0", ":+1", ":65535", ":2380:1"],
            &["", "/", "/x", "?q", "#f", "#%z", "\0", " ", "?a b"],
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut kept_count, mut refused_count) = (0, 0);
        for _ in 0..100_000 {
            let mut url = String::new();
            for choices in parts {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                url.push_str(choices[(state >> 33) as usize % choices.len()]);
            }
            match verdict(&url) {
                Ok(kept) => {
                    kept_count += 1;
                    assert_eq!(verdict(&kept), Ok(kept.clone()), "{url:?}");
                }
                Err(_) => refused_count += 1,
            }
        }
        assert!(
            kept_count > 50 && refused_count > 50,
            "{kept_count} kept, {refused_count} refused"
        );
    }

    #[test]
    fn refusals_are_etcds_error() {
        let status = validate(&["http://127.0.0.1".to_string()]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: given member URLs are invalid");
        assert_eq!(
            validate(&[" http://a:1".to_string()]).unwrap(),
            vec!["http://a:1".to_string()]
        );
    }
}
