//! The collaboration records: teams and their members, quotas and usage, share links, upload links (reverse
//! shares) and the audit log.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{AuditId, FileKey, ShareId, TeamId, UploadLinkId, UserId};
use crate::names::Username;

/// A member's role in a team, from most to least powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    /// Everything, including deleting the team and managing other owners. A team always keeps one.
    Owner,
    /// Manages members (except owners) and every team file.
    Admin,
    /// Uploads, downloads and shares; renames and deletes the files they uploaded.
    Member,
    /// Lists and downloads.
    Viewer,
}

impl TeamRole {
    pub const ALL: [Self; 4] = [Self::Owner, Self::Admin, Self::Member, Self::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether someone with this role may add, remove or re-role a member holding `other` (or grant `other`).
    /// Owners manage everyone; admins manage members and viewers; nobody else manages anyone.
    pub fn manages(self, other: TeamRole) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => matches!(other, Self::Member | Self::Viewer),
            Self::Member | Self::Viewer => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub id: TeamId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub user: UserId,
    pub username: Username,
    pub role: TeamRole,
    pub added_at: OffsetDateTime,
}

/// What a membership change did. The store refuses, atomically, any change that would leave a team ownerless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Done,
    NotMember,
    LastOwner,
}

/// Who pays for a file's bytes: its uploader, or the team it was uploaded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    User(UserId),
    Team(TeamId),
}

/// Limits of an account; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub bytes: Option<u64>,
    pub files: Option<u64>,
}

impl Quota {
    pub const UNLIMITED: Self = Self {
        bytes: None,
        files: None,
    };

    /// This quota, each unset limit taken from `default`.
    #[must_use]
    pub fn or(self, default: Self) -> Self {
        Self {
            bytes: self.bytes.or(default.bytes),
            files: self.files.or(default.files),
        }
    }
}

/// An account's current usage, with the quota that applies to it (its own, or the configured default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub quota: Quota,
}

impl Usage {
    /// Bytes that may still be stored; `None` when unlimited.
    pub fn bytes_left(&self) -> Option<u64> {
        self.quota.bytes.map(|max| max.saturating_sub(self.bytes))
    }

    pub fn files_left(&self) -> Option<u64> {
        self.quota.files.map(|max| max.saturating_sub(self.files))
    }
}

/// What must hold, in the same transaction, for new files to become visible.
#[derive(Clone, Copy, Debug)]
pub struct CommitRules {
    /// The quota for an account that has none of its own (the files' account: their team's, or their uploader's).
    pub default_quota: Quota,
    /// Files arriving through an upload link also count against that link's limits.
    pub upload_link: Option<UploadLinkId>,
    pub now: OffsetDateTime,
    /// `false` only for imports of files that were already accepted elsewhere.
    pub enforce_quota: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    QuotaExceeded,
    /// The upload link expired, was revoked, or has no room left for these files.
    LinkExhausted,
}

/// A share link: anyone holding its token may download its files without an account, within its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub id: ShareId,
    pub owner: UserId,
    /// The files, in the order the link shows them.
    pub files: Vec<FileKey>,
    pub note: Option<String>,
    /// argon2id PHC string when the link needs a password.
    pub password_hash: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub max_downloads: Option<u64>,
    pub downloads: u64,
    pub revoked: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Share {
    /// Whether the link still works: not revoked, not expired, downloads left.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        !self.revoked
            && self.expires_at.is_none_or(|at| at > now)
            && self.max_downloads.is_none_or(|max| self.downloads < max)
    }
}

/// Changes the owner may make to a share link. `Some(None)` clears a setting.
#[derive(Clone, Debug, Default)]
pub struct SharePatch {
    pub note: Option<Option<String>>,
    pub password_hash: Option<Option<String>>,
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub max_downloads: Option<Option<u64>>,
}

/// An upload link (reverse share): people without an account send files into the owner's (or a team's) space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadLink {
    pub id: UploadLinkId,
    /// The user who made the link; files arriving through it are theirs (or their team's).
    pub owner: UserId,
    pub team: Option<TeamId>,
    pub note: Option<String>,
    pub password_hash: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub max_files: Option<u64>,
    pub max_bytes: Option<u64>,
    pub files_received: u64,
    pub bytes_received: u64,
    pub revoked: bool,
    pub created_at: OffsetDateTime,
}

impl UploadLink {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        !self.revoked
            && self.expires_at.is_none_or(|at| at > now)
            && self.max_files.is_none_or(|max| self.files_received < max)
            && self.max_bytes.is_none_or(|max| self.bytes_received < max)
    }

    pub fn account(&self) -> Account {
        self.team.map_or(Account::User(self.owner), Account::Team)
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditId,
    pub at: OffsetDateTime,
    /// A stable dotted name: `file.upload`, `share.download`, `team.member_add`, `auth.signin`, …
    pub action: String,
    /// Who did it; `None` for someone without an account (a link holder) or the server itself.
    pub actor: Option<UserId>,
    /// The owner of what was acted on: they see the event.
    pub owner: Option<UserId>,
    /// The team of what was acted on: its owners and admins see the event.
    pub team: Option<TeamId>,
    pub file: Option<FileKey>,
    /// The file's name at the time, the member's username, a share id…: a short JSON object.
    pub detail: Option<String>,
}

/// Whose events a listing shows.
#[derive(Clone, Copy, Debug)]
pub enum AuditScope {
    Owner(UserId),
    Team(TeamId),
    Everything,
}
