//! The access policy: the one place that decides whether someone may act on a file. Handlers gather the facts
//! (who is asking, their role in the file's team, whether they hold a live share link for it) and ask; they never
//! decide themselves.

use crate::model::{FileRecord, User, Visibility};
use crate::sharing::TeamRole;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAction {
    ReadMetadata,
    Download,
    /// Rename or change visibility.
    Modify,
    Delete,
    /// Put the file into a share link.
    Share,
    /// See the file in a listing (a team's, or the admin's list of everything).
    List,
}

impl FileAction {
    pub const ALL: [Self; 6] = [
        Self::ReadMetadata,
        Self::Download,
        Self::Modify,
        Self::Delete,
        Self::Share,
        Self::List,
    ];
}

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub enum Actor<'a> {
    /// No account, no link.
    Anonymous,
    /// Someone without an account presenting a live share link that contains the file (the caller checked the
    /// link: token, password, expiry, downloads left).
    LinkHolder,
    /// A signed-in account, with its role in the file's team if the file belongs to one they are in.
    User {
        user: &'a User,
        team_role: Option<TeamRole>,
    },
}

/// The answer, already shaped as the client must see it: a file the caller may not know about is `Hidden`
/// (reported as not found), one they know about but may not change is `Forbidden`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Forbidden,
    Hidden,
}

pub fn file_access(actor: Actor<'_>, file: &FileRecord, action: FileAction) -> Access {
    use Access::*;
    use FileAction::*;
    let (user, team_role) = match actor {
        Actor::Anonymous => return Hidden,
        Actor::LinkHolder => {
            return match action {
                ReadMetadata | Download => Allowed,
                Modify | Delete | Share | List => Hidden,
            };
        }
        Actor::User { user, team_role } => (user, team_role),
    };
    if user.disabled {
        return Hidden;
    }
    let by_relation = match (file.team, team_role) {
        // A personal file: its owner may do everything.
        (None, _) if file.owner == user.id => Allowed,
        // A team file: rights come from the role alone (an uploader who left the team keeps nothing).
        (Some(_), Some(role)) => match role {
            TeamRole::Owner | TeamRole::Admin => Allowed,
            TeamRole::Member => match action {
                Modify | Delete if file.owner != user.id => Forbidden,
                _ => Allowed,
            },
            TeamRole::Viewer => match action {
                ReadMetadata | Download | List => Allowed,
                Modify | Delete | Share => Forbidden,
            },
        },
        // Anyone else: what the file's visibility grants a signed-in key holder.
        _ => match (file.visibility, action) {
            (Visibility::Key, ReadMetadata | Download) => Allowed,
            (Visibility::Key, Modify | Delete | Share) => Forbidden,
            (Visibility::Key, List) | (Visibility::Private, _) => Hidden,
        },
    };
    // Server admins moderate on top of whatever else they are: they see, list and delete anything, but reading
    // private bytes is not theirs to do.
    if by_relation != Allowed && user.is_admin && matches!(action, ReadMetadata | List | Delete) {
        return Allowed;
    }
    by_relation
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::ids::{BlobId, FileKey, TeamId, UserId};
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

    fn file(owner: &User, visibility: Visibility, team: Option<TeamId>) -> FileRecord {
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
            team,
            expires_at: None,
            upload_link: None,
        }
    }

    fn as_user(user: &User, team_role: Option<TeamRole>) -> Actor<'_> {
        Actor::User { user, team_role }
    }

    /// `A`llowed, `F`orbidden, `H`idden for each action, in [`FileAction::ALL`] order.
    fn expect(row: &str) -> Vec<Access> {
        row.split_whitespace()
            .map(|c| match c {
                "A" => Access::Allowed,
                "F" => Access::Forbidden,
                "H" => Access::Hidden,
                other => panic!("bad cell {other}"),
            })
            .collect()
    }

    /// The whole matrix: every kind of actor × every action × every kind of file. Rows read
    /// `metadata download modify delete share list`.
    #[test]
    fn access_matrix() {
        let me = user("myself");
        let other = user("other");
        let mut admin = user("admin");
        admin.is_admin = true;
        let mut disabled = me.clone();
        disabled.disabled = true;
        let team = TeamId::generate();

        // Files, from the point of view of `me` (the acting user for every User row).
        let own_private = file(&me, Visibility::Private, None);
        let own_key = file(&me, Visibility::Key, None);
        let team_file_by_other = file(&other, Visibility::Private, Some(team));
        let team_file_by_me = file(&me, Visibility::Private, Some(team));
        let others_private = file(&other, Visibility::Private, None);
        let others_key = file(&other, Visibility::Key, None);

        let (me, admin, disabled) = (&me, &admin, &disabled);
        let cases: Vec<(&str, Actor<'_>, &FileRecord, &str)> = vec![
            // Anonymous callers never see anything.
            ("anonymous", Actor::Anonymous, &own_private, "H H H H H H"),
            ("anonymous", Actor::Anonymous, &others_key, "H H H H H H"),
            ("anonymous", Actor::Anonymous, &team_file_by_other, "H H H H H H"),
            // A link holder reads and downloads what the link contains, nothing more.
            ("link holder", Actor::LinkHolder, &others_private, "A A H H H H"),
            ("link holder", Actor::LinkHolder, &team_file_by_other, "A A H H H H"),
            // The owner of a personal file.
            ("owner", as_user(me, None), &own_private, "A A A A A A"),
            ("owner", as_user(me, None), &own_key, "A A A A A A"),
            // Another signed-in user: private is invisible, key files are readable only.
            ("other user", as_user(me, None), &others_private, "H H H H H H"),
            ("other user", as_user(me, None), &others_key, "A A F F F H"),
            // Not a member of the file's team: a private team file is invisible.
            ("non-member", as_user(me, None), &team_file_by_other, "H H H H H H"),
            // Team roles on a team file uploaded by someone else, and on one uploaded by the actor.
            (
                "team owner",
                as_user(me, Some(TeamRole::Owner)),
                &team_file_by_other,
                "A A A A A A",
            ),
            (
                "team admin",
                as_user(me, Some(TeamRole::Admin)),
                &team_file_by_other,
                "A A A A A A",
            ),
            (
                "team member",
                as_user(me, Some(TeamRole::Member)),
                &team_file_by_other,
                "A A F F A A",
            ),
            (
                "team member",
                as_user(me, Some(TeamRole::Member)),
                &team_file_by_me,
                "A A A A A A",
            ),
            (
                "team viewer",
                as_user(me, Some(TeamRole::Viewer)),
                &team_file_by_other,
                "A A F F F A",
            ),
            (
                "team viewer",
                as_user(me, Some(TeamRole::Viewer)),
                &team_file_by_me,
                "A A F F F A",
            ),
            // A team role says nothing about personal files.
            (
                "team owner",
                as_user(me, Some(TeamRole::Owner)),
                &others_private,
                "H H H H H H",
            ),
            // Server admins see, list and delete everything, but do not read private bytes or change files.
            ("server admin", as_user(admin, None), &others_private, "A H H A H A"),
            ("server admin", as_user(admin, None), &others_key, "A A F A F A"),
            ("server admin", as_user(admin, None), &team_file_by_other, "A H H A H A"),
            // A server admin who is only a viewer in the team still moderates its files.
            (
                "server admin as viewer",
                as_user(admin, Some(TeamRole::Viewer)),
                &team_file_by_other,
                "A A F A F A",
            ),
            // A disabled account loses everything, even its own files.
            ("disabled owner", as_user(disabled, None), &own_private, "H H H H H H"),
            ("disabled owner", as_user(disabled, None), &others_key, "H H H H H H"),
            (
                "disabled member",
                as_user(disabled, Some(TeamRole::Owner)),
                &team_file_by_me,
                "H H H H H H",
            ),
        ];
        for (who, actor, file, row) in cases {
            for (action, want) in FileAction::ALL.iter().zip(expect(row)) {
                assert_eq!(
                    file_access(actor, file, *action),
                    want,
                    "{who} / {:?} {:?} (team {}) / {action:?}",
                    file.visibility,
                    file.owner,
                    file.team.is_some()
                );
            }
        }
    }

    #[test]
    fn role_management_is_strictly_downward_for_admins() {
        use TeamRole::*;
        for target in TeamRole::ALL {
            assert!(Owner.manages(target));
        }
        assert!(Admin.manages(Member) && Admin.manages(Viewer));
        assert!(!Admin.manages(Admin) && !Admin.manages(Owner));
        for target in TeamRole::ALL {
            assert!(!Member.manages(target) && !Viewer.manages(target));
        }
    }
}
