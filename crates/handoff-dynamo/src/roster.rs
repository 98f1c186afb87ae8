//! Rosters: how a limit on "things of one owner that are alive *now*" (live share and upload links, open upload
//! sessions) is made atomic without a lock. What counts depends on the clock, so no counter can track it; instead
//! the owner has one roster item (`USER#<id>` / `ROSTER#<kind>`) listing the ids that may still count, with a
//! version. A capped insert reads the roster, reads its members (strongly consistent), counts the alive ones,
//! and writes the new item together with the roster (alive ids plus the new one, version + 1) on the condition
//! that the version is still the one it counted. Of two racing inserts, one sees its condition fail and counts
//! again.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use handoff_core::StoreResult;

use crate::client::DynamoStore;
use crate::core::{put, update, values};
use crate::item::{Item, ItemBuilder, Row, n};

/// A roster as read: its members and the version the next write must match (`None`: no roster yet).
#[derive(Debug)]
pub(crate) struct Roster {
    pub pk: String,
    pub sk: String,
    pub ids: Vec<String>,
    pub version: Option<u64>,
}

impl DynamoStore {
    pub(crate) async fn roster(&self, pk: String, sk: &str) -> StoreResult<Roster> {
        let item = self.get(pk.as_str(), sk).await?;
        let (ids, version) = match &item {
            Some(item) => (Row(item).strings("member_ids")?, Row(item).opt_u64("roster_version")?),
            None => (Vec::new(), None),
        };
        Ok(Roster {
            pk,
            sk: sk.to_owned(),
            ids,
            version,
        })
    }

    /// The members' items, by the keys `key_of` derives from each id (missing members are left out).
    pub(crate) async fn roster_items(
        &self,
        roster: &Roster,
        key_of: impl Fn(&str) -> Option<Item>,
    ) -> StoreResult<Vec<Item>> {
        let keys = roster.ids.iter().filter_map(|id| key_of(id)).collect();
        self.batch_get(keys).await
    }
}

impl Roster {
    /// Replaces the roster with `ids`, on the condition that nobody changed it since it was read.
    pub fn replace(&self, table: &str, mut ids: Vec<String>) -> StoreResult<TransactWriteItem> {
        ids.sort();
        ids.dedup();
        let version = self.version.map_or(1, |v| v + 1);
        let mut item = ItemBuilder::new(self.pk.as_str(), self.sk.as_str()).num("roster_version", version);
        if !ids.is_empty() {
            item = item.set("member_ids", AttributeValue::Ss(ids));
        }
        let item = item.build();
        match self.version {
            Some(v) => {
                let put = aws_sdk_dynamodb::types::Put::builder()
                    .table_name(table)
                    .set_item(Some(item))
                    .condition_expression("roster_version = :v")
                    .expression_attribute_values(":v", n(v))
                    .build()
                    .map_err(crate::client::other)?;
                Ok(TransactWriteItem::builder().put(put).build())
            }
            None => put(table, item, Some("attribute_not_exists(roster_version)")),
        }
    }
}

/// Adds `id` to the roster unconditionally (bumping its version, so a capped insert in flight counts again).
pub(crate) fn roster_add(table: &str, pk: String, sk: &str, id: &str) -> StoreResult<TransactWriteItem> {
    update(
        table,
        pk,
        sk,
        "ADD member_ids :id, roster_version :one",
        None,
        values([(":id", AttributeValue::Ss(vec![id.to_owned()])), (":one", n(1))]),
    )
}

/// Removes `id` from the roster (bumping its version).
pub(crate) fn roster_remove(table: &str, pk: String, sk: &str, id: &str) -> StoreResult<TransactWriteItem> {
    update(
        table,
        pk,
        sk,
        "DELETE member_ids :id ADD roster_version :one",
        None,
        values([(":id", AttributeValue::Ss(vec![id.to_owned()])), (":one", n(1))]),
    )
}
