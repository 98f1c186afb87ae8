//! The table definition and [`ensure_table`], which creates it when it is missing (tests, `handoff migrate`,
//! first start). In production the SAM template creates the table: `crates/handoff-dynamo/table.json` holds the
//! same definition as CloudFormation `AWS::DynamoDB::Table` properties, ready to copy (a unit test keeps the two
//! in step).

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, SseSpecification, TableStatus,
};
use handoff_core::{StoreError, StoreResult};

use crate::client::{other, sdk_error};

/// The global secondary indexes, each keyed by `<name>PK` / `<name>SK` and projecting every attribute.
pub const INDEXES: [&str; 5] = ["GSI1", "GSI2", "GSI3", "GSI4", "GSI5"];

fn key_element(name: &str, kind: KeyType) -> StoreResult<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(other)
}

/// Creates the table (on-demand capacity, encrypted) unless it exists, then waits until it is active. An existing
/// table must have every index this store queries.
pub async fn ensure_table(client: &Client, table: &str) -> StoreResult<()> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let description = out.table.ok_or_else(|| other("DescribeTable returned no table"))?;
            let present: Vec<&str> = description
                .global_secondary_indexes()
                .iter()
                .filter_map(|i| i.index_name())
                .collect();
            if let Some(missing) = INDEXES.iter().find(|i| !present.contains(i)) {
                return Err(StoreError::Corrupt(format!(
                    "table {table} lacks the index {missing} (see crates/handoff-dynamo/table.json)"
                )));
            }
            if description.table_status() == Some(&TableStatus::Active) {
                return Ok(());
            }
        }
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(DescribeTableError::ResourceNotFoundException(_))
            ) =>
        {
            create_table(client, table).await?;
        }
        Err(e) => return Err(sdk_error(e)),
    }
    wait_active(client, table).await
}

/// Creates the table as `table.json` describes it.
pub async fn create_table(client: &Client, table: &str) -> StoreResult<()> {
    let mut attributes = vec!["PK".to_owned(), "SK".to_owned()];
    let mut indexes = Vec::new();
    for index in INDEXES {
        let (pk, sk) = (format!("{index}PK"), format!("{index}SK"));
        indexes.push(
            GlobalSecondaryIndex::builder()
                .index_name(index)
                .key_schema(key_element(&pk, KeyType::Hash)?)
                .key_schema(key_element(&sk, KeyType::Range)?)
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .map_err(other)?,
        );
        attributes.extend([pk, sk]);
    }
    let definitions = attributes
        .iter()
        .map(|name| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(other)
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(definitions))
        .key_schema(key_element("PK", KeyType::Hash)?)
        .key_schema(key_element("SK", KeyType::Range)?)
        .set_global_secondary_indexes(Some(indexes))
        .sse_specification(SseSpecification::builder().enabled(true).build())
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another node created it first.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(sdk_error(e)),
    }
}

async fn wait_active(client: &Client, table: &str) -> StoreResult<()> {
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_error)?;
        let table_active = out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let indexes_active = out.table().is_some_and(|t| {
            t.global_secondary_indexes()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"))
        });
        if table_active && indexes_active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(format!("table {table} did not become active")))
}

#[cfg(test)]
mod tests {
    use super::INDEXES;

    /// `table.json` (what the SAM template copies) describes the table `create_table` makes.
    #[test]
    fn table_json_matches_the_code() {
        let json: serde_json::Value = serde_json::from_str(include_str!("../table.json")).expect("table.json is JSON");
        assert_eq!(json["BillingMode"], "PAY_PER_REQUEST");
        let names: Vec<&str> = json["GlobalSecondaryIndexes"]
            .as_array()
            .expect("indexes")
            .iter()
            .map(|i| i["IndexName"].as_str().expect("name"))
            .collect();
        assert_eq!(names, INDEXES);
        for index in json["GlobalSecondaryIndexes"].as_array().expect("indexes") {
            let name = index["IndexName"].as_str().expect("name");
            assert_eq!(index["KeySchema"][0]["AttributeName"], format!("{name}PK"));
            assert_eq!(index["KeySchema"][1]["AttributeName"], format!("{name}SK"));
            assert_eq!(index["Projection"]["ProjectionType"], "ALL");
        }
        let attributes = json["AttributeDefinitions"].as_array().expect("attributes");
        assert_eq!(attributes.len(), 2 + 2 * INDEXES.len());
        assert!(attributes.iter().all(|a| a["AttributeType"] == "S"));
    }
}
