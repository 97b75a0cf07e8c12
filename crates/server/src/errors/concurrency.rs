//! Plain errors: etcd's Lock and Election servers run on an in-process client and hand back
//! Go errors, which gRPC sends with code Unknown and the error's text; its Authenticate does the
//! same with the errors of its token signer and of bcrypt.

use tonic::Status;

/// etcd's `concurrency.ErrElectionNotLeader`: a Proclaim or Resign by a leader key that does not
/// lead (anymore), or a Campaign whose candidacy vanished while waiting.
pub fn election_not_leader() -> Status {
    Status::unknown("election: not leader")
}

/// etcd's `concurrency.ErrElectionNoLeader`: a Leader call on an election nobody leads.
pub fn election_no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// etcd's `v3election.ErrMissingLeaderKey`: a Proclaim or Resign without a leader key.
pub fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// etcd's `concurrency.ErrSessionExpired`: a Lock whose waiting key vanished (its lease ran out)
/// before it got the lock.
pub fn session_expired() -> Status {
    Status::unknown("mutex: session is expired")
}

/// etcd's answer to a Proclaim or Resign whose leader key is empty, and to an Unlock of the empty
/// key: its KV server's `ErrGRPCEmptyKey`, which reaches the client through the election (or
/// lock) server's in-process client as a plain error (checked against etcd 3.4.23).
pub fn plain_empty_key() -> Status {
    Status::unknown(crate::errors::empty_key().message())
}

/// etcd's `auth.ErrVerifyOnly`: Authenticate on a member whose JWT options give a public key but
/// no private one, so it can check tokens but not sign them.
pub const VERIFY_ONLY: &str = "auth: token signing attempted with verify-only key";

/// Go's `bcrypt.ErrPasswordTooLong`, which etcd passes on as is: a UserAdd or UserChangePassword
/// with a password longer than bcrypt takes.
pub fn password_too_long() -> Status {
    Status::unknown("bcrypt: password length exceeds 72 bytes")
}
