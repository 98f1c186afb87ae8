//! The access policy: the one place that decides whether a user may act on a file. Handlers ask; they never
//! decide themselves.

use crate::model::{FileRecord, User, Visibility};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAction {
    Download,
    ReadMetadata,
    Modify,
    Delete,
}

/// The answer, already shaped as the client must see it: a file the caller may not know about is `Hidden`
/// (reported as not found), one they know about but may not change is `Forbidden`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Forbidden,
    Hidden,
}

pub fn file_access(actor: &User, file: &FileRecord, action: FileAction) -> Access {
    if actor.disabled {
        return Access::Hidden;
    }
    if file.owner == actor.id {
        return Access::Allowed;
    }
    match (file.visibility, action) {
        (Visibility::Private, _) => Access::Hidden,
        (Visibility::Key, FileAction::Download | FileAction::ReadMetadata) => Access::Allowed,
        (Visibility::Key, FileAction::Modify | FileAction::Delete) => Access::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::ids::{BlobId, FileKey, UserId};
    use crate::names::{FileName, Username};

    fn user(name: &str) -> User {
        User {
            id: UserId::generate(),
            username: Username::parse(name).expect("valid"),
            email: None,
            password_hash: None,
            is_admin: false,
            disabled: false,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn file(owner: &User, visibility: Visibility) -> FileRecord {
        FileRecord {
            key: FileKey::generate(),
            blob: BlobId::generate(),
            owner: owner.id,
            name: FileName::from_trusted("a.txt".into()),
            size: 1,
            sha256: String::new(),
            content_type: "text/plain".into(),
            visibility,
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    /// The whole matrix: {owner, other user, disabled owner} × {private, key} × every action.
    #[test]
    fn access_matrix() {
        use Access::*;
        use FileAction::*;
        let owner = user("owner");
        let other = user("other");
        let mut disabled_owner = owner.clone();
        disabled_owner.disabled = true;
        let actions = [Download, ReadMetadata, Modify, Delete];
        let cases: [(&User, Visibility, [Access; 4]); 6] = [
            (&owner, Visibility::Private, [Allowed; 4]),
            (&owner, Visibility::Key, [Allowed; 4]),
            (&other, Visibility::Private, [Hidden; 4]),
            (&other, Visibility::Key, [Allowed, Allowed, Forbidden, Forbidden]),
            (&disabled_owner, Visibility::Private, [Hidden; 4]),
            (&disabled_owner, Visibility::Key, [Hidden; 4]),
        ];
        for (actor, visibility, expected) in cases {
            let f = file(&owner, visibility);
            for (action, want) in actions.iter().zip(expected) {
                assert_eq!(
                    file_access(actor, &f, *action),
                    want,
                    "{} {visibility:?} {action:?}",
                    actor.username
                );
            }
        }
    }
}
