//! etcd's authentication and role-based authorization on real clusters: every key-touching
//! and admin RPC refuses a caller without a token, with an expired token, or without the
//! permission, with etcd's code and message, and serves the right user; a wrong password never
//! yields a token. Also: etcdctl with `--user`, revocations in force at once on other members,
//! the auth store across restarts and snapshots, JWTs across members, the failed-login brake,
//! and no secret in any member's log.
//!
//! Most calls go through the raw gRPC stubs, so each request carries exactly the `token`
//! metadata the test chooses (as etcd clients send it).

mod common;

use std::time::Duration;

use common::{eventually, Cluster, WAIT};
use concord_proto::authpb::{permission::Type as PermType, Permission};
use concord_proto::etcdserverpb::auth_client::AuthClient;
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::*;
use concord_proto::v3electionpb::election_client::ElectionClient;
use concord_proto::v3electionpb::{CampaignRequest, ResignRequest};
use concord_proto::v3lockpb::lock_client::LockClient;
use concord_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const ROOT_PW: &str = "r00t-Pa55word";
const ALICE_PW: &str = "alice-Pa55word";
const BOB_PW: &str = "bob-Pa55word";

const USER_EMPTY: &str = "etcdserver: user name is empty";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const DENIED: &str = "etcdserver: permission denied";
const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
const OLD_REVISION: &str = "etcdserver: revision of auth store is old";

/// Raw gRPC stubs to one member.
#[derive(Clone)]
struct Api {
    kv: KvClient<Channel>,
    auth: AuthClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
}

impl Api {
    async fn to(cluster: &Cluster, i: usize) -> Api {
        let url = cluster.members[i].client_url.clone();
        let channel = eventually("connect", || {
            let url = url.clone();
            async move { Channel::from_shared(url).unwrap().connect().await }
        })
        .await;
        Api {
            kv: KvClient::new(channel.clone()),
            auth: AuthClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            lock: LockClient::new(channel.clone()),
            election: ElectionClient::new(channel),
        }
    }

    async fn authenticate(&self, name: &str, password: &str) -> Result<String, Status> {
        let req = AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        };
        Ok(self.auth.clone().authenticate(req).await?.into_inner().token)
    }

    async fn token(&self, name: &str, password: &str) -> String {
        self.authenticate(name, password)
            .await
            .unwrap_or_else(|e| panic!("{name} cannot authenticate: {e:?}"))
    }

    async fn get(&self, key: &str, token: Option<&str>) -> Result<RangeResponse, Status> {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(self.kv.clone().range(with(req, token)).await?.into_inner())
    }

    async fn put(&self, key: &str, token: Option<&str>) -> Result<PutResponse, Status> {
        let req = PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        Ok(self.kv.clone().put(with(req, token)).await?.into_inner())
    }
}

/// `msg` with the `token` metadata etcd clients send, if any.
fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(token) = token {
        req.metadata_mut().insert("token", token.parse().unwrap());
    }
    req
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code, message: &str) {
    match result {
        Err(status) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "{what}: wrong refusal"
        ),
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got {v:?}"),
    }
}

fn perm(kind: PermType, key: &str, range_end: &str) -> Permission {
    Permission {
        perm_type: kind as i32,
        key: key.into(),
        range_end: range_end.into(),
    }
}

/// With auth still off: root (with the root role), alice (readwrite on the prefix `/app/`) and
/// bob (readwrite on `/other/`); then auth on.
async fn set_up_auth(api: &Api) {
    let mut auth = api.auth.clone();
    for (user, password) in [("root", ROOT_PW), ("alice", ALICE_PW), ("bob", BOB_PW)] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    auth.role_add(AuthRoleAddRequest { name: "root".into() }).await.unwrap();
    for (role, prefix, end) in [("app", "/app/", "/app0"), ("other", "/other/", "/other0")] {
        auth.role_add(AuthRoleAddRequest { name: role.into() }).await.unwrap();
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm(PermType::Readwrite, prefix, end)),
        })
        .await
        .unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "app"), ("bob", "other")] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// The RPCs of the matrix.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Watch,
    LeaseRevoke,
    LeaseTimeToLiveKeys,
    Lock,
    Campaign,
    UserAdd,
    RoleGrantPermission,
    UserList,
    HashKv,
    AlarmDeactivate,
    MemberUpdate,
}

impl Rpc {
    /// Only root may call it (else a user with readwrite on `/app/` may).
    fn admin(self) -> bool {
        matches!(
            self,
            Rpc::Compact
                | Rpc::UserAdd
                | Rpc::RoleGrantPermission
                | Rpc::UserList
                | Rpc::HashKv
                | Rpc::AlarmDeactivate
                | Rpc::MemberUpdate
        )
    }
}

/// How an RPC refused, in the shape it answers with: a gRPC status, or (Watch) a creation
/// response that is canceled at once.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served,
    Refused(Code, String),
    WatchCanceled(String),
}

fn outcome<T>(result: Result<T, Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Served,
        Err(s) => Outcome::Refused(s.code(), s.message().to_string()),
    }
}

/// What etcd answers `rpc` called with a refusal of `code` and `message`.
fn expected(rpc: Rpc, code: Code, message: &str) -> Outcome {
    match rpc {
        Rpc::Watch => Outcome::WatchCanceled(format!("rpc error: code = {code:?} desc = {message}")),
        // etcd's Lock and Election servers pass errors on as plain errors.
        Rpc::Lock | Rpc::Campaign => Outcome::Refused(Code::Unknown, message.to_string()),
        _ => Outcome::Refused(code, message.to_string()),
    }
}

/// Calls `rpc` once with `token`; `root` is a root token for set-up steps (a lease to revoke).
async fn call(api: &Api, rpc: Rpc, token: Option<&str>, root: &str, n: usize) -> Outcome {
    match rpc {
        Rpc::Range => outcome(api.get("/app/k", token).await),
        Rpc::Put => outcome(api.put("/app/k", token).await),
        Rpc::DeleteRange => {
            let req = DeleteRangeRequest {
                key: "/app/".into(),
                range_end: "/app0".into(),
                prev_kv: false,
            };
            outcome(api.kv.clone().delete_range(with(req, token)).await)
        }
        Rpc::Txn => {
            let req = TxnRequest {
                compare: vec![Compare {
                    key: "/app/k".into(),
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Version as i32,
                    target_union: Some(TargetUnion::Version(0)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(TxnOp::RequestPut(PutRequest {
                        key: "/app/t".into(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(TxnOp::RequestRange(RangeRequest {
                        key: "/app/k".into(),
                        ..Default::default()
                    })),
                }],
            };
            outcome(api.kv.clone().txn(with(req, token)).await)
        }
        Rpc::Compact => {
            let revision = api.get("/app/k", Some(root)).await.unwrap().header.unwrap().revision;
            let req = CompactionRequest {
                revision,
                physical: false,
            };
            outcome(api.kv.clone().compact(with(req, token)).await)
        }
        Rpc::Watch => {
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: "/app/".into(),
                    range_end: "/app0".into(),
                    ..Default::default()
                })),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(create).await.unwrap();
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut responses = match api.watch.clone().watch(with(stream, token)).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Outcome::Refused(s.code(), s.message().to_string()),
            };
            let first = tokio::time::timeout(WAIT, responses.next())
                .await
                .expect("a watch response");
            let resp = first.expect("stream open").expect("no error");
            assert!(resp.created, "{resp:?}");
            drop(tx);
            if resp.canceled {
                assert_eq!(resp.watch_id, -1);
                Outcome::WatchCanceled(resp.cancel_reason)
            } else {
                Outcome::Served
            }
        }
        Rpc::LeaseRevoke => {
            let lease = api.lease.clone();
            let grant = with(LeaseGrantRequest { ttl: 60, id: 0 }, Some(root));
            let id = lease.clone().lease_grant(grant).await.unwrap().into_inner().id;
            let put = PutRequest {
                key: format!("/app/leased-{n}").into(),
                lease: id,
                ..Default::default()
            };
            api.kv.clone().put(with(put, Some(root))).await.unwrap();
            outcome(lease.clone().lease_revoke(with(LeaseRevokeRequest { id }, token)).await)
        }
        Rpc::LeaseTimeToLiveKeys => {
            let grant = with(LeaseGrantRequest { ttl: 60, id: 0 }, Some(root));
            let id = api.lease.clone().lease_grant(grant).await.unwrap().into_inner().id;
            let put = PutRequest {
                key: format!("/app/ttl-{n}").into(),
                lease: id,
                ..Default::default()
            };
            api.kv.clone().put(with(put, Some(root))).await.unwrap();
            let req = LeaseTimeToLiveRequest { id, keys: true };
            outcome(api.lease.clone().lease_time_to_live(with(req, token)).await)
        }
        Rpc::Lock => {
            let req = LockRequest {
                name: "/app/lock".into(),
                lease: 0,
            };
            match api.lock.clone().lock(with(req, token)).await {
                Ok(resp) => {
                    let key = resp.into_inner().key;
                    api.lock
                        .clone()
                        .unlock(with(UnlockRequest { key }, token))
                        .await
                        .unwrap();
                    Outcome::Served
                }
                Err(s) => Outcome::Refused(s.code(), s.message().to_string()),
            }
        }
        Rpc::Campaign => {
            let req = CampaignRequest {
                name: "/app/election".into(),
                lease: 0,
                value: b"me".to_vec(),
            };
            match api.election.clone().campaign(with(req, token)).await {
                Ok(resp) => {
                    let leader = resp.into_inner().leader;
                    api.election
                        .clone()
                        .resign(with(ResignRequest { leader }, token))
                        .await
                        .unwrap();
                    Outcome::Served
                }
                Err(s) => Outcome::Refused(s.code(), s.message().to_string()),
            }
        }
        Rpc::UserAdd => {
            let req = AuthUserAddRequest {
                name: format!("user-{n}"),
                password: "pw".into(),
                ..Default::default()
            };
            outcome(api.auth.clone().user_add(with(req, token)).await)
        }
        Rpc::RoleGrantPermission => {
            let req = AuthRoleGrantPermissionRequest {
                name: "app".into(),
                perm: Some(perm(PermType::Read, &format!("/extra/{n}"), "")),
            };
            outcome(api.auth.clone().role_grant_permission(with(req, token)).await)
        }
        Rpc::UserList => outcome(api.auth.clone().user_list(with(AuthUserListRequest {}, token)).await),
        Rpc::HashKv => outcome(
            api.maintenance
                .clone()
                .hash_kv(with(HashKvRequest { revision: 0 }, token))
                .await,
        ),
        Rpc::AlarmDeactivate => {
            let req = AlarmRequest {
                action: alarm_request::AlarmAction::Deactivate as i32,
                member_id: 1,
                alarm: AlarmType::Nospace as i32,
            };
            outcome(api.maintenance.clone().alarm(with(req, token)).await)
        }
        Rpc::MemberUpdate => {
            // Sets a member's peer URLs to what they are.
            let members = api
                .cluster
                .clone()
                .member_list(MemberListRequest { linearizable: false })
                .await
                .unwrap()
                .into_inner()
                .members;
            let me = &members[0];
            let req = MemberUpdateRequest {
                id: me.id,
                peer_ur_ls: me.peer_ur_ls.clone(),
            };
            outcome(api.cluster.clone().member_update(with(req, token)).await)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_no_token_wrong_password_expired_token_and_missing_permission() {
    // Simple tokens expire after 2 s without use.
    let cluster = Cluster::start_with(3, &["--auth-token-ttl", "2"]).await;
    let apis = [
        Api::to(&cluster, 0).await,
        Api::to(&cluster, 1).await,
        Api::to(&cluster, 2).await,
    ];
    set_up_auth(&apis[0]).await;

    // A token that works now and will have expired (unused) when the matrix runs.
    let stale = apis[0].token("alice", ALICE_PW).await;
    apis[0].put("/app/k", Some(&stale)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let rpcs = [
        Rpc::Range,
        Rpc::Put,
        Rpc::DeleteRange,
        Rpc::Txn,
        Rpc::Compact,
        Rpc::Watch,
        Rpc::LeaseRevoke,
        Rpc::LeaseTimeToLiveKeys,
        Rpc::Lock,
        Rpc::Campaign,
        Rpc::UserAdd,
        Rpc::RoleGrantPermission,
        Rpc::UserList,
        Rpc::HashKv,
        Rpc::AlarmDeactivate,
        Rpc::MemberUpdate,
    ];
    let mut tokens_seen = vec![stale.clone()];
    for (n, rpc) in rpcs.into_iter().enumerate() {
        // Spread the calls over the members: tokens are known cluster-wide.
        let api = &apis[n % 3];
        let (right, right_pw) = if rpc.admin() {
            ("root", ROOT_PW)
        } else {
            ("alice", ALICE_PW)
        };
        let (lacking, lacking_pw) = if rpc.admin() {
            ("alice", ALICE_PW)
        } else {
            ("bob", BOB_PW)
        };

        // A wrong password never yields a token.
        assert_refused(
            &format!("{rpc:?}: wrong password"),
            api.authenticate(right, "not-the-password").await,
            Code::InvalidArgument,
            AUTH_FAILED,
        );

        // Tokens are fetched just before use: they expire after 2 s without use.
        let root = api.token("root", ROOT_PW).await;
        let no_token = call(api, rpc, None, &root, n).await;
        assert_eq!(
            no_token,
            expected(rpc, Code::InvalidArgument, USER_EMPTY),
            "{rpc:?} without a token"
        );
        let root = api.token("root", ROOT_PW).await;
        let expired = call(api, rpc, Some(&stale), &root, n).await;
        assert_eq!(
            expired,
            expected(rpc, Code::Unauthenticated, INVALID_TOKEN),
            "{rpc:?} with an expired token"
        );
        let (root, lacking_token) = (api.token("root", ROOT_PW).await, api.token(lacking, lacking_pw).await);
        let lacking_outcome = call(api, rpc, Some(&lacking_token), &root, n).await;
        assert_eq!(
            lacking_outcome,
            expected(rpc, Code::PermissionDenied, DENIED),
            "{rpc:?} as {lacking}, who lacks the permission"
        );
        let (root, right_token) = (api.token("root", ROOT_PW).await, api.token(right, right_pw).await);
        let served = call(api, rpc, Some(&right_token), &root, n).await;
        assert_eq!(served, Outcome::Served, "{rpc:?} as {right}");
        tokens_seen.extend([root, right_token, lacking_token]);
    }

    // No password, hash or token ever reached a member's log.
    for i in 0..3 {
        for secret in [ROOT_PW, ALICE_PW, BOB_PW]
            .iter()
            .map(|s| s.to_string())
            .chain(tokens_seen.iter().cloned())
        {
            assert!(!cluster.log_contains(i, &secret), "member {i}'s log holds a secret");
        }
        assert!(!cluster.log_contains(i, "$2b$"), "member {i}'s log holds a bcrypt hash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_management_follows_etcd() {
    let cluster = Cluster::start_with(1, &["--bcrypt-cost", "4"]).await;
    let api = Api::to(&cluster, 0).await;
    let mut auth = api.auth.clone();
    // Authenticating while auth is off, and enabling without a proper root.
    assert_refused(
        "authenticate while disabled",
        api.authenticate("root", "x").await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );
    assert_refused(
        "enable without root",
        auth.auth_enable(AuthEnableRequest {}).await,
        Code::FailedPrecondition,
        "etcdserver: root user does not exist",
    );
    auth.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: ROOT_PW.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_refused(
        "enable without the root role",
        auth.auth_enable(AuthEnableRequest {}).await,
        Code::FailedPrecondition,
        "etcdserver: root user does not have root role",
    );
    auth.role_add(AuthRoleAddRequest { name: "root".into() }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    let status = auth.auth_status(AuthStatusRequest {}).await.unwrap().into_inner();
    assert!(!status.enabled);
    let revision_before = status.auth_revision;
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();

    let root = api.token("root", ROOT_PW).await;
    let status = auth
        .auth_status(with(AuthStatusRequest {}, Some(&root)))
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled);
    assert_eq!(
        status.auth_revision, revision_before,
        "enabling does not move the revision"
    );

    macro_rules! r {
        ($msg:expr) => {
            with($msg, Some(root.as_str()))
        };
    }
    assert_refused(
        "duplicate user",
        auth.user_add(r!(AuthUserAddRequest {
            name: "root".into(),
            password: "x".into(),
            ..Default::default()
        }))
        .await,
        Code::FailedPrecondition,
        "etcdserver: user name already exists",
    );
    assert_refused(
        "empty user",
        auth.user_add(r!(AuthUserAddRequest {
            name: "".into(),
            password: "x".into(),
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    assert_refused(
        "missing user",
        auth.user_get(r!(AuthUserGetRequest { name: "nobody".into() })).await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_refused(
        "missing role",
        auth.role_get(r!(AuthRoleGetRequest { role: "nobody".into() })).await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_refused(
        "grant a missing role",
        auth.user_grant_role(r!(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "nobody".into()
        }))
        .await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_refused(
        "revoke an ungranted role",
        auth.user_revoke_role(r!(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "nobody".into()
        }))
        .await,
        Code::FailedPrecondition,
        "etcdserver: role is not granted to the user",
    );
    assert_refused(
        "delete root",
        auth.user_delete(r!(AuthUserDeleteRequest { name: "root".into() }))
            .await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    assert_refused(
        "take root from root",
        auth.user_revoke_role(r!(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into()
        }))
        .await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    auth.role_add(r!(AuthRoleAddRequest { name: "ro".into() }))
        .await
        .unwrap();
    assert_refused(
        "duplicate role",
        auth.role_add(r!(AuthRoleAddRequest { name: "ro".into() })).await,
        Code::FailedPrecondition,
        "etcdserver: role name already exists",
    );
    assert_refused(
        "empty role",
        auth.role_add(r!(AuthRoleAddRequest { name: "".into() })).await,
        Code::InvalidArgument,
        "etcdserver: role name is empty",
    );
    assert_refused(
        "no permission",
        auth.role_grant_permission(r!(AuthRoleGrantPermissionRequest {
            name: "ro".into(),
            perm: None
        }))
        .await,
        Code::InvalidArgument,
        "etcdserver: permission not given",
    );
    assert_refused(
        "revoke an ungranted permission",
        auth.role_revoke_permission(r!(AuthRoleRevokePermissionRequest {
            role: "ro".into(),
            key: b"x".to_vec(),
            range_end: vec![]
        }))
        .await,
        Code::FailedPrecondition,
        "etcdserver: permission is not granted to the role",
    );
    auth.role_grant_permission(r!(AuthRoleGrantPermissionRequest {
        name: "ro".into(),
        perm: Some(perm(PermType::Read, "cfg/", "cfg0"))
    }))
    .await
    .unwrap();

    // A user added without password cannot log in with one.
    auth.user_add(r!(AuthUserAddRequest {
        name: "svc".into(),
        options: Some(concord_proto::authpb::UserAddOptions { no_password: true }),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_refused(
        "no-password user",
        api.authenticate("svc", "anything").await,
        Code::Unknown,
        "auth: authentication failed, password was given for no password user",
    );

    // Users see themselves and their roles, not others.
    auth.user_add(r!(AuthUserAddRequest {
        name: "carol".into(),
        password: "carol-pw".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    auth.user_grant_role(r!(AuthUserGrantRoleRequest {
        user: "carol".into(),
        role: "ro".into()
    }))
    .await
    .unwrap();
    let carol = api.token("carol", "carol-pw").await;
    macro_rules! c {
        ($msg:expr) => {
            with($msg, Some(carol.as_str()))
        };
    }
    assert_eq!(
        auth.user_get(c!(AuthUserGetRequest { name: "carol".into() }))
            .await
            .unwrap()
            .into_inner()
            .roles,
        vec!["ro".to_string()]
    );
    assert_refused(
        "carol reads root",
        auth.user_get(c!(AuthUserGetRequest { name: "root".into() })).await,
        Code::PermissionDenied,
        DENIED,
    );
    let perms = auth
        .role_get(c!(AuthRoleGetRequest { role: "ro".into() }))
        .await
        .unwrap()
        .into_inner()
        .perm;
    assert_eq!(perms, vec![perm(PermType::Read, "cfg/", "cfg0")]);
    assert_refused(
        "carol reads root's role",
        auth.role_get(c!(AuthRoleGetRequest { role: "root".into() })).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_refused(
        "carol lists roles",
        auth.role_list(c!(AuthRoleListRequest {})).await,
        Code::PermissionDenied,
        DENIED,
    );
    let roles = auth
        .role_list(r!(AuthRoleListRequest {}))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert_eq!(roles, vec!["ro".to_string(), "root".to_string()]);
    let root_role = auth
        .role_get(r!(AuthRoleGetRequest { role: "root".into() }))
        .await
        .unwrap()
        .into_inner()
        .perm;
    assert_eq!(root_role, vec![perm(PermType::Readwrite, "", "\0")]);
    let users = auth
        .user_list(r!(AuthUserListRequest {}))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users, vec!["carol".to_string(), "root".to_string(), "svc".to_string()]);

    // A read-only role reads, but neither writes nor reads outside its prefix.
    api.put("cfg/a", Some(&root)).await.unwrap();
    assert_eq!(api.get("cfg/a", Some(&carol)).await.unwrap().kvs.len(), 1);
    assert_refused(
        "read-only put",
        api.put("cfg/a", Some(&carol)).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_refused(
        "read outside",
        api.get("other", Some(&carol)).await,
        Code::PermissionDenied,
        DENIED,
    );

    // A new password voids the old tokens; so does deleting the user.
    auth.user_change_password(r!(AuthUserChangePasswordRequest {
        name: "carol".into(),
        password: "new-pw".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_refused(
        "token after password change",
        api.get("cfg/a", Some(&carol)).await,
        Code::Unauthenticated,
        INVALID_TOKEN,
    );
    assert_refused(
        "old password",
        api.authenticate("carol", "carol-pw").await,
        Code::InvalidArgument,
        AUTH_FAILED,
    );
    let carol = api.token("carol", "new-pw").await;
    auth.user_delete(r!(AuthUserDeleteRequest { name: "carol".into() }))
        .await
        .unwrap();
    assert_refused(
        "token of a deleted user",
        api.get("cfg/a", Some(&carol)).await,
        Code::Unauthenticated,
        INVALID_TOKEN,
    );

    // Deleting a role takes it from its users; disabling auth opens everything again.
    auth.role_delete(r!(AuthRoleDeleteRequest { role: "ro".into() }))
        .await
        .unwrap();
    auth.auth_disable(r!(AuthDisableRequest {})).await.unwrap();
    api.put("anything", None).await.unwrap();
    assert!(
        !auth
            .auth_status(AuthStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .enabled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_user_manages_and_uses_auth() {
    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4"]).await;
    let eps = cluster.endpoints();
    let run = |args: &[&str]| {
        let out = cluster.etcdctl(&eps, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ok = |args: &[&str]| {
        let (success, text) = run(args);
        assert!(success, "etcdctl {args:?} failed: {text}");
        text
    };
    ok(&["user", "add", &format!("root:{ROOT_PW}")]);
    // etcdctl creates the root role and grants it when AuthEnable asks for it.
    let enabled = ok(&["auth", "enable"]);
    assert!(enabled.contains("Authentication Enabled"), "{enabled}");
    let as_root = format!("--user=root:{ROOT_PW}");
    ok(&[&as_root, "user", "add", &format!("alice:{ALICE_PW}")]);
    ok(&[&as_root, "role", "add", "app"]);
    ok(&[
        &as_root,
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "--prefix=true",
        "/app/",
    ]);
    ok(&[&as_root, "user", "grant-role", "alice", "app"]);
    let role = ok(&[&as_root, "role", "get", "app"]);
    assert!(role.contains("[/app/, /app0) (prefix /app/)"), "{role}");
    assert!(ok(&[&as_root, "user", "list"]).contains("alice"));

    let as_alice = format!("--user=alice:{ALICE_PW}");
    ok(&[&as_alice, "put", "/app/config", "v1"]);
    assert!(ok(&[&as_alice, "get", "/app/config"]).contains("v1"));
    assert!(ok(&[&as_alice, "get", "--prefix", "/app/"]).contains("/app/config"));
    for args in [
        vec!["put", "/etc/passwd", "x"],
        vec!["get", "/etc/passwd"],
        vec!["get", "", "--prefix"],
        vec!["user", "list"],
    ] {
        let mut full = vec![as_alice.as_str()];
        full.extend(args.iter());
        let (success, text) = run(&full);
        assert!(!success && text.contains(DENIED), "etcdctl {args:?} as alice: {text}");
    }
    let (success, text) = run(&["get", "/app/config"]);
    assert!(!success && text.contains(USER_EMPTY), "no user: {text}");
    let (success, text) = run(&["--user=alice:wrong", "get", "/app/config"]);
    assert!(!success && text.contains(AUTH_FAILED), "wrong password: {text}");
    ok(&[&as_root, "auth", "disable"]);
    ok(&["get", "/app/config"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_permission_is_in_force_at_once_on_another_member() {
    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4"]).await;
    let apis = [
        Api::to(&cluster, 0).await,
        Api::to(&cluster, 1).await,
        Api::to(&cluster, 2).await,
    ];
    set_up_auth(&apis[0]).await;
    let alice = apis[0].token("alice", ALICE_PW).await;
    let bob = apis[0].token("bob", BOB_PW).await;
    apis[2].put("/app/k", Some(&alice)).await.unwrap();
    apis[2].get("/app/k", Some(&alice)).await.unwrap();
    apis[2].get("/other/k", Some(&bob)).await.unwrap();

    for round in 0..5 {
        // Revoke through member 1; the very next requests go to member 2.
        let root = apis[1].token("root", ROOT_PW).await;
        let revoke = AuthRoleRevokePermissionRequest {
            role: "app".into(),
            key: "/app/".into(),
            range_end: "/app0".into(),
        };
        apis[1]
            .auth
            .clone()
            .role_revoke_permission(with(revoke, Some(&root)))
            .await
            .unwrap();
        assert_refused(
            &format!("round {round}: read after revoke"),
            apis[2].get("/app/k", Some(&alice)).await,
            Code::PermissionDenied,
            DENIED,
        );
        let watch = call(&apis[2], Rpc::Watch, Some(&alice), &root, round).await;
        assert_eq!(
            watch,
            expected(Rpc::Watch, Code::PermissionDenied, DENIED),
            "round {round}: watch after revoke"
        );
        // A write is checked at apply, at its place in the log: refused either for the missing
        // permission or, if member 2 had not yet applied the revoke when it took the request,
        // because the identity predates it (etcd's "revision of auth store is old").
        match apis[2].put("/app/k", Some(&alice)).await {
            Err(s) if s.code() == Code::PermissionDenied && s.message() == DENIED => {}
            Err(s) if s.code() == Code::InvalidArgument && s.message() == OLD_REVISION => {}
            other => panic!("round {round}: write after revoke: {other:?}"),
        }
        // Granting it back is in force at once too.
        let grant = AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(perm(PermType::Readwrite, "/app/", "/app0")),
        };
        apis[1]
            .auth
            .clone()
            .role_grant_permission(with(grant, Some(&root)))
            .await
            .unwrap();
        apis[2].get("/app/k", Some(&alice)).await.unwrap();
    }

    // Taking a role from a user and deleting a user act the same way.
    let root = apis[1].token("root", ROOT_PW).await;
    let revoke_role = AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "app".into(),
    };
    apis[1]
        .auth
        .clone()
        .user_revoke_role(with(revoke_role, Some(&root)))
        .await
        .unwrap();
    assert_refused(
        "read after role revoke",
        apis[2].get("/app/k", Some(&alice)).await,
        Code::PermissionDenied,
        DENIED,
    );
    apis[1]
        .auth
        .clone()
        .user_delete(with(AuthUserDeleteRequest { name: "bob".into() }, Some(&root)))
        .await
        .unwrap();
    assert_refused(
        "read after user delete",
        apis[2].get("/other/k", Some(&bob)).await,
        Code::Unauthenticated,
        INVALID_TOKEN,
    );

    // etcd-client users see the same.
    let opts = etcd_client::ConnectOptions::new().with_user("root", ROOT_PW);
    let mut client = etcd_client::Client::connect([cluster.members[2].client_url.as_str()], Some(opts))
        .await
        .unwrap();
    client.put("/anywhere", "x", None).await.unwrap();
}

/// Checks the auth store on member `i`: alice works under `/app/` only, and anonymous
/// callers are refused.
async fn assert_auth_in_force(api: &Api, who: &str) {
    let alice = api.token("alice", ALICE_PW).await;
    api.put("/app/after", Some(&alice))
        .await
        .unwrap_or_else(|e| panic!("{who}: alice's put: {e:?}"));
    let serializable = RangeRequest {
        key: "/app/after".into(),
        serializable: true,
        ..Default::default()
    };
    assert_eq!(
        api.kv
            .clone()
            .range(with(serializable, Some(&alice)))
            .await
            .unwrap()
            .into_inner()
            .kvs
            .len(),
        1
    );
    assert_refused(
        &format!("{who}: alice outside her prefix"),
        api.get("/other/x", Some(&alice)).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_refused(
        &format!("{who}: anonymous"),
        api.get("/app/after", None).await,
        Code::InvalidArgument,
        USER_EMPTY,
    );
    assert_refused(
        &format!("{who}: wrong password"),
        api.authenticate("bob", "nope").await,
        Code::InvalidArgument,
        AUTH_FAILED,
    );
}

/// etcd's Hash of every member, as root: equal when they hold the same auth store and data.
async fn hashes(apis: &[Api]) -> Vec<u32> {
    let mut hashes = Vec::new();
    for api in apis {
        let root = api.token("root", ROOT_PW).await;
        let resp = api
            .maintenance
            .clone()
            .hash(with(HashRequest {}, Some(&root)))
            .await
            .unwrap();
        hashes.push(resp.into_inner().hash);
    }
    hashes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_a_full_restart_and_reaches_a_member_through_a_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--bcrypt-cost",
            "4",
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    )
    .await;
    // Member 2 is away while auth is set up and the log moves on, so it can only learn the
    // auth store from a snapshot.
    cluster.terminate(2);
    // Member 2 may have led: let the others settle on a leader before proposing.
    cluster.wait_for_leader().await;
    let api0 = Api::to(&cluster, 0).await;
    set_up_auth(&api0).await;
    let root = api0.token("root", ROOT_PW).await;
    for i in 0..60 {
        api0.put(&format!("/fill/{i}"), Some(&root)).await.unwrap();
    }
    // The log is truncated only behind the stores' last durable commit; a defragment (root
    // only) makes the store durable at once, and the writes after it move past the truncation.
    let api1 = Api::to(&cluster, 1).await;
    for api in [&api0, &api1] {
        let root = api.token("root", ROOT_PW).await;
        api.maintenance
            .clone()
            .defragment(with(DefragmentRequest {}, Some(&root)))
            .await
            .unwrap();
    }
    for i in 60..100 {
        api0.put(&format!("/fill/{i}"), Some(&root)).await.unwrap();
    }
    cluster.restart(2);
    let api2 = Api::to(&cluster, 2).await;
    eventually("member 2 catches up", || {
        let api2 = api2.clone();
        async move {
            let resp = api2
                .kv
                .clone()
                .range(RangeRequest {
                    key: "/fill/99".into(),
                    serializable: true,
                    ..Default::default()
                })
                .await;
            match resp {
                Err(s) if s.message() == USER_EMPTY => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        cluster.log_contains(2, "installed snapshot"),
        "member 2 did not catch up through a snapshot"
    );
    assert_auth_in_force(&api2, "member 2 after the snapshot").await;
    let apis = [api0.clone(), Api::to(&cluster, 1).await, api2];
    let before = eventually("hashes agree", || {
        let apis = apis.clone();
        async move {
            let h = hashes(&apis).await;
            if h.windows(2).all(|w| w[0] == w[1]) {
                Ok(h)
            } else {
                Err(h)
            }
        }
    })
    .await;

    // Every member stops; the auth store comes back with them.
    for i in 0..3 {
        cluster.terminate(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for_leader().await;
    let mut apis = Vec::new();
    for i in 0..3 {
        apis.push(Api::to(&cluster, i).await);
    }
    for (i, api) in apis.iter().enumerate() {
        assert_auth_in_force(api, &format!("member {i} after the restart")).await;
    }
    let after = hashes(&apis).await;
    assert!(after.windows(2).all(|w| w[0] == w[1]), "{after:?}");
    assert_ne!(before, after, "the puts above changed the data");
}

/// Writes an RSA key pair with openssl; returns (private, public) paths.
fn rsa_keys(dir: &std::path::Path) -> (String, String) {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let status = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (private.display().to_string(), public.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_work_on_every_member_and_expire() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(keys.path());
    let spec = format!("jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=6s");
    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4", "--auth-token", &spec]).await;
    let apis = [
        Api::to(&cluster, 0).await,
        Api::to(&cluster, 1).await,
        Api::to(&cluster, 2).await,
    ];
    set_up_auth(&apis[0]).await;

    let alice = apis[0].token("alice", ALICE_PW).await;
    assert_eq!(alice.split('.').count(), 3, "a JWT: header.claims.signature");
    for (i, api) in apis.iter().enumerate() {
        api.put(&format!("/app/from-{i}"), Some(&alice))
            .await
            .unwrap_or_else(|e| panic!("member {i}: {e:?}"));
        api.get("/app/from-0", Some(&alice)).await.unwrap();
        assert_refused(
            &format!("member {i}: outside the prefix"),
            api.put("/other/x", Some(&alice)).await,
            Code::PermissionDenied,
            DENIED,
        );
    }
    // A token signed with another key is refused.
    let forged = {
        let mut parts: Vec<&str> = alice.split('.').collect();
        parts[2] = "AAAA";
        parts.join(".")
    };
    assert_refused(
        "forged JWT",
        apis[1].get("/app/from-0", Some(&forged)).await,
        Code::Unauthenticated,
        INVALID_TOKEN,
    );

    // An auth change makes earlier JWTs stale: clients authenticate again.
    let root = apis[1].token("root", ROOT_PW).await;
    apis[1]
        .auth
        .clone()
        .role_add(with(AuthRoleAddRequest { name: "new".into() }, Some(&root)))
        .await
        .unwrap();
    assert_refused(
        "JWT from before an auth change",
        apis[2].get("/app/from-0", Some(&alice)).await,
        Code::InvalidArgument,
        OLD_REVISION,
    );
    let alice = apis[2].token("alice", ALICE_PW).await;
    apis[0].get("/app/from-0", Some(&alice)).await.unwrap();

    tokio::time::sleep(Duration::from_secs(7)).await;
    for (i, api) in apis.iter().enumerate() {
        assert_refused(
            &format!("member {i}: expired JWT"),
            api.get("/app/from-0", Some(&alice)).await,
            Code::Unauthenticated,
            INVALID_TOKEN,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_lock_the_user_for_a_while() {
    let cluster = Cluster::start_with(1, &["--bcrypt-cost", "4"]).await;
    let api = Api::to(&cluster, 0).await;
    set_up_auth(&api).await;
    for attempt in 0..6 {
        assert_refused(
            &format!("attempt {attempt}"),
            api.authenticate("alice", "guess").await,
            Code::InvalidArgument,
            AUTH_FAILED,
        );
    }
    let locked_at = std::time::Instant::now();
    // Locked: even the right password is refused, the same way.
    let attempt = api.authenticate("alice", ALICE_PW).await;
    if locked_at.elapsed() < Duration::from_millis(900) {
        assert_refused(
            "right password while locked",
            attempt,
            Code::InvalidArgument,
            AUTH_FAILED,
        );
    }
    // Other users are not affected.
    api.token("bob", BOB_PW).await;
    assert!(cluster.log_contains(0, "too many failed authentications"));
    // The first lock lasts a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    api.token("alice", ALICE_PW).await;
}
