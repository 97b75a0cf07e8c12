//! What a user may touch, and what a request touches: etcd's key-range permission semantics.
//!
//! A permission names a key, a prefix or a range with etcd's `range_end` conventions:
//! * empty `range_end`: the one key `key`;
//! * `range_end == [0]`: every key from `key` on ("from key"; with an empty `key`, every key);
//! * otherwise the half-open range `[key, range_end)` (a prefix `p` is `[p, prefix_end(p))`).
//!
//! A user's permissions are the union of the permissions of its roles, split into what it may
//! read and what it may write (READWRITE counts for both). A request on one key is allowed when
//! some permission holds the key; a request on a range is allowed only when the union of the
//! permissions covers the whole range, as etcd's interval-tree `Contains` decides. Holders of the
//! `root` role may do everything.
//!
//! The same functions decide at apply time (writes, in `auth/apply.rs`) and at read time (the
//! server's reads and watches), so both sides always agree.

use concord_proto::authpb::{permission::Type as PermType, Role, User};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// The role that may do everything, and the user that must hold it before auth can be enabled.
pub const ROOT: &str = "root";

/// Whether a request reads or writes the keys it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Range, txn compares and reads, watches, `prev_kv`.
    Read,
    /// Put, DeleteRange, and every key a lease revoke would delete.
    Write,
}

/// One key or range a request touches, with etcd's `range_end` conventions (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    /// Read or write.
    pub access: Access,
    /// The key, or the start of the range.
    pub key: &'a [u8],
    /// Empty for one key, `[0]` for "to the end", else the exclusive end.
    pub range_end: &'a [u8],
}

impl<'a> Need<'a> {
    /// `access` on `[key, range_end)` (etcd conventions).
    pub fn new(access: Access, key: &'a [u8], range_end: &'a [u8]) -> Self {
        Need { access, key, range_end }
    }
}

/// A half-open key interval; `end == None` means "to the end of the keyspace".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Span {
    /// The keys an etcd `(key, range_end)` pair names; a single key `k` is `[k, k\0)`.
    fn from_etcd(key: &[u8], range_end: &[u8]) -> Span {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Span {
            start: key.to_vec(),
            end,
        }
    }

    /// Whether the span holds no key at all (an end at or before its start).
    fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|end| end <= self.start.as_slice())
    }
}

/// Sorts spans by start and merges the ones that overlap or touch, so that coverage checks are a
/// binary search away.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|s| !s.is_empty());
    spans.sort_by(|a, b| a.start.cmp(&b.start));
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        if let Some(last) = merged.last_mut() {
            let touches = match &last.end {
                None => true,
                Some(end) => span.start.as_slice() <= end.as_slice(),
            };
            if touches {
                last.end = match (last.end.take(), span.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                continue;
            }
        }
        merged.push(span);
    }
    merged
}

/// Whether the merged, sorted `spans` cover every key of `want`.
fn covers(spans: &[Span], want: &Span) -> bool {
    if want.is_empty() {
        // etcd's interval tree finds nothing intersecting an empty interval: refused.
        return false;
    }
    // The last merged span starting at or before `want.start` is the only one that can hold it;
    // merged spans never touch, so it must reach the end of `want` on its own.
    let idx = spans.partition_point(|s| s.start.as_slice() <= want.start.as_slice());
    let Some(span) = idx.checked_sub(1).map(|i| &spans[i]) else {
        return false;
    };
    match (&span.end, &want.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(have), Some(need)) => need <= have,
    }
}

/// Everything one user may read and write: the union of its roles' permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    /// Holds the `root` role: may do everything.
    pub root: bool,
    read: Vec<Span>,
    write: Vec<Span>,
}

impl UserPerms {
    /// The permissions of `user`, whose roles are looked up with `role` (a role that does not
    /// exist grants nothing).
    pub fn of(user: &User, mut role: impl FnMut(&str) -> Option<Role>) -> UserPerms {
        let root = user.roles.iter().any(|r| r == ROOT);
        let (mut read, mut write) = (Vec::new(), Vec::new());
        if !root {
            for name in &user.roles {
                let Some(role) = role(name) else { continue };
                for perm in role.key_permission {
                    let span = Span::from_etcd(&perm.key, &perm.range_end);
                    match PermType::try_from(perm.perm_type) {
                        Ok(PermType::Read) => read.push(span),
                        Ok(PermType::Write) => write.push(span),
                        Ok(PermType::Readwrite) => {
                            read.push(span.clone());
                            write.push(span);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        UserPerms {
            root,
            read: merge(read),
            write: merge(write),
        }
    }

    /// Whether the user may do `need`.
    pub fn permits(&self, need: &Need<'_>) -> bool {
        if self.root {
            return true;
        }
        let spans = match need.access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        covers(spans, &Span::from_etcd(need.key, need.range_end))
    }
}

/// What a Range needs: read on its keys.
pub fn range_needs(req: &RangeRequest) -> Vec<Need<'_>> {
    vec![Need::new(Access::Read, &req.key, &req.range_end)]
}

/// What a Put needs: write on its key, and read too when it asks for the previous value. (The
/// keys of a lease it attaches the key to are checked by whoever can see the lease's keys.)
pub fn put_needs(req: &PutRequest) -> Vec<Need<'_>> {
    let mut needs = vec![Need::new(Access::Write, &req.key, &[])];
    if req.prev_kv {
        needs.push(Need::new(Access::Read, &req.key, &[]));
    }
    needs
}

/// What a DeleteRange needs: write on its keys, and read too when it asks for the deleted values.
pub fn delete_needs(req: &DeleteRangeRequest) -> Vec<Need<'_>> {
    let mut needs = vec![Need::new(Access::Write, &req.key, &req.range_end)];
    if req.prev_kv {
        needs.push(Need::new(Access::Read, &req.key, &req.range_end));
    }
    needs
}

/// What a Txn needs, as etcd's `CheckTxnAuth`: read on every compare, and what every operation of
/// both branches needs, whichever branch runs. Nested txns are checked the same way (etcd 3.5
/// skips them, which would let a nested put through unchecked).
pub fn txn_needs(txn: &TxnRequest) -> Vec<Need<'_>> {
    let mut needs = Vec::new();
    add_txn_needs(txn, &mut needs);
    needs
}

fn add_txn_needs<'a>(txn: &'a TxnRequest, needs: &mut Vec<Need<'a>>) {
    for compare in &txn.compare {
        needs.push(Need::new(Access::Read, &compare.key, &compare.range_end));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => needs.extend(range_needs(r)),
            Some(Request::RequestPut(r)) => needs.extend(put_needs(r)),
            Some(Request::RequestDeleteRange(r)) => needs.extend(delete_needs(r)),
            Some(Request::RequestTxn(t)) => add_txn_needs(t, needs),
            None => {}
        }
    }
}

/// The leases a Txn's puts attach keys to (every branch, nested ones included): etcd refuses to
/// attach a key to a lease whose keys the user could not write, since revoking it deletes them.
pub fn txn_leases(txn: &TxnRequest) -> Vec<i64> {
    let mut leases = Vec::new();
    let mut stack = vec![txn];
    while let Some(txn) = stack.pop() {
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(Request::RequestPut(p)) if p.lease != 0 => leases.push(p.lease),
                Some(Request::RequestTxn(t)) => stack.push(t),
                _ => {}
            }
        }
    }
    leases.sort_unstable();
    leases.dedup();
    leases
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::authpb::Permission;

    fn perm(kind: PermType, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    fn user_with(perms: Vec<Permission>) -> UserPerms {
        let user = User {
            name: b"u".to_vec(),
            roles: vec!["r".into()],
            ..Default::default()
        };
        UserPerms::of(&user, |_| {
            Some(Role {
                name: b"r".to_vec(),
                key_permission: perms.clone(),
            })
        })
    }

    fn read(p: &UserPerms, key: &str, end: &[u8]) -> bool {
        p.permits(&Need::new(Access::Read, key.as_bytes(), end))
    }

    fn write(p: &UserPerms, key: &str, end: &[u8]) -> bool {
        p.permits(&Need::new(Access::Write, key.as_bytes(), end))
    }

    #[test]
    fn a_single_key_permission_allows_that_key_only() {
        let p = user_with(vec![perm(PermType::Readwrite, "foo", b"")]);
        assert!(read(&p, "foo", b"") && write(&p, "foo", b""));
        assert!(!read(&p, "foo1", b"") && !read(&p, "fo", b""));
        // A range holding only that key ([foo, foo\0)) is covered; anything wider is not.
        assert!(read(&p, "foo", b"foo\0"));
        assert!(!read(&p, "foo", b"fop"));
    }

    #[test]
    fn a_prefix_permission_covers_keys_and_sub_ranges_inside_it() {
        // etcdctl role grant-permission r read --prefix /app/ → [/app/, /app0)
        let p = user_with(vec![perm(PermType::Read, "/app/", b"/app0")]);
        assert!(read(&p, "/app/x", b""));
        assert!(read(&p, "/app/", b"/app0"));
        assert!(read(&p, "/app/a", b"/app/b"));
        assert!(!read(&p, "/app", b""));
        assert!(!read(&p, "/app/", b"/app1"), "wider than the prefix");
        assert!(!read(&p, "/app/", b"\0"), "to the end of the keyspace");
        assert!(!write(&p, "/app/x", b""), "read only");
    }

    #[test]
    fn from_key_and_all_keys() {
        let from_m = user_with(vec![perm(PermType::Write, "m", &[0])]);
        assert!(write(&from_m, "m", b"") && write(&from_m, "zzz", b""));
        assert!(write(&from_m, "n", &[0]), "from n to the end lies inside from m");
        assert!(!write(&from_m, "a", b""));
        assert!(!write(&from_m, "a", &[0]));
        let all = user_with(vec![perm(PermType::Read, "", &[0])]);
        assert!(read(&all, "\0", &[0]) && read(&all, "anything", b""));
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_permissions() {
        let p = user_with(vec![
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "c", b"e"),
            perm(PermType::Readwrite, "e", b""),
            perm(PermType::Read, "x", b"z"),
        ]);
        assert!(read(&p, "a", b"e"), "[a,c) and [c,e) touch");
        assert!(read(&p, "b", b"e\0"), "...and the point e continues them");
        assert!(!read(&p, "b", b"e\0\0"));
        assert!(!read(&p, "a", b"y"), "gap between e\\0 and x");
        assert!(read(&p, "x", b"z") && !read(&p, "w", b"z"));
        assert!(write(&p, "e", b"") && !write(&p, "a", b""));
    }

    #[test]
    fn empty_and_inverted_ranges_are_refused_like_etcd() {
        let p = user_with(vec![perm(PermType::Readwrite, "", &[0])]);
        assert!(!read(&p, "b", b"a"));
        assert!(!read(&p, "b", b"b"));
    }

    #[test]
    fn root_may_do_everything_and_missing_roles_grant_nothing() {
        let root = User {
            roles: vec!["root".into()],
            ..Default::default()
        };
        let p = UserPerms::of(&root, |_| None);
        assert!(p.root && read(&p, "x", &[0]) && write(&p, "", &[0]));
        let nobody = User {
            roles: vec!["gone".into()],
            ..Default::default()
        };
        let p = UserPerms::of(&nobody, |_| None);
        assert!(!read(&p, "x", b""));
    }

    #[test]
    fn txn_needs_cover_compares_both_branches_and_nested_txns() {
        use concord_proto::etcdserverpb::{Compare, RequestOp};
        let op = |r: Request| RequestOp { request: Some(r) };
        let nested = TxnRequest {
            compare: vec![],
            success: vec![op(Request::RequestPut(PutRequest {
                key: b"n".to_vec(),
                lease: 7,
                ..Default::default()
            }))],
            failure: vec![],
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![op(Request::RequestRange(RangeRequest {
                key: b"r".to_vec(),
                ..Default::default()
            }))],
            failure: vec![
                op(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: b"e".to_vec(),
                    prev_kv: true,
                })),
                op(Request::RequestTxn(nested)),
            ],
        };
        let needs = txn_needs(&txn);
        let seen: Vec<(Access, &[u8])> = needs.iter().map(|n| (n.access, n.key)).collect();
        assert_eq!(
            seen,
            vec![
                (Access::Read, &b"c"[..]),
                (Access::Read, b"r"),
                (Access::Write, b"d"),
                (Access::Read, b"d"),
                (Access::Write, b"n"),
            ]
        );
        assert_eq!(txn_leases(&txn), vec![7]);
    }
}
