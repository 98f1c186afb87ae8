//! `deploy/aws/template.yaml`: cfn-lint finds nothing, every IAM statement names only the stack's own bucket,
//! table and log group, the resources keep the promised settings, and the function's environment is a valid
//! Handoff configuration.
//!
//! The template uses long-form intrinsics (`Fn::Sub:`, `Ref:`), so a plain YAML parser reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn template_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/aws/template.yaml")
}

fn template() -> Value {
    let path = template_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("the template is plain YAML (long-form intrinsics only)")
}

fn resources(template: &Value) -> &serde_json::Map<String, Value> {
    template["Resources"].as_object().expect("Resources")
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    resources(template).iter().filter(|(_, r)| r["Type"] == kind).collect()
}

fn one_of_type<'a>(template: &'a Value, kind: &str) -> (&'a String, &'a Value) {
    let all = of_type(template, kind);
    assert_eq!(all.len(), 1, "expected exactly one {kind}");
    all[0]
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Which service's actions may name which of the stack's resources.
const ALLOWED: &[(&str, &str)] = &[
    ("logs:", "AWS::Logs::LogGroup"),
    ("s3:", "AWS::S3::Bucket"),
    ("dynamodb:", "AWS::DynamoDB::Table"),
];

/// The logical id an IAM resource expression refers to, if it is one of the accepted shapes:
/// `{Fn::GetAtt: [Id, Arn]}` or `{Fn::Sub: "${Id.Arn}<suffix>"}` with a suffix made of path segments.
fn referenced(resource: &Value) -> Result<String, String> {
    if let Some(getatt) = resource.get("Fn::GetAtt") {
        return match getatt.as_array().map(Vec::as_slice) {
            Some([Value::String(id), Value::String(attr)]) if attr == "Arn" => Ok(id.clone()),
            _ => Err(format!("unexpected Fn::GetAtt {getatt}")),
        };
    }
    if let Some(sub) = resource.get("Fn::Sub").and_then(Value::as_str) {
        let rest = sub
            .strip_prefix("${")
            .ok_or_else(|| format!("{sub:?} does not start with a stack ARN"))?;
        let (var, suffix) = rest.split_once('}').ok_or_else(|| format!("{sub:?} is malformed"))?;
        let id = var
            .strip_suffix(".Arn")
            .ok_or_else(|| format!("{sub:?} does not start with ${{Resource.Arn}}"))?;
        if suffix.contains("${") {
            return Err(format!("{sub:?} names more than one resource"));
        }
        if !suffix.starts_with('/') {
            return Err(format!(
                "{sub:?}: the suffix must be a path under the resource, not {suffix:?}"
            ));
        }
        return Ok(id.to_owned());
    }
    Err(format!(
        "resource {resource} is neither Fn::GetAtt [Id, Arn] nor Fn::Sub \"${{Id.Arn}}/…\""
    ))
}

/// Every problem with the identity policies of `template` (an empty list is a pass).
fn policy_violations(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let resources = resources(template);
    let mut statements = Vec::new();
    for (id, resource) in resources {
        let kind = resource["Type"].as_str().unwrap_or_default();
        let properties = &resource["Properties"];
        match kind {
            "AWS::IAM::Role" => {
                for policy in as_list(&properties["Policies"]) {
                    statements.extend(
                        as_list(&policy["PolicyDocument"]["Statement"])
                            .into_iter()
                            .map(|s| (id, s)),
                    );
                }
                if !properties["ManagedPolicyArns"].is_null() {
                    problems.push(format!("{id}: managed policies grant more than this stack's resources"));
                }
                if !properties["PermissionsBoundary"].is_null() {
                    problems.push(format!("{id}: unexpected permissions boundary"));
                }
            }
            "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                statements.extend(
                    as_list(&properties["PolicyDocument"]["Statement"])
                        .into_iter()
                        .map(|s| (id, s)),
                );
            }
            "AWS::IAM::User" | "AWS::IAM::Group" | "AWS::IAM::AccessKey" => {
                problems.push(format!("{id}: the stack must not create {kind}"));
            }
            "AWS::Serverless::Function" => {
                // SAM would make a role from these, out of sight of this test: the function must use ours.
                if !properties["Policies"].is_null() {
                    problems.push(format!("{id}: SAM `Policies` (use the explicit role)"));
                }
                if properties["Role"].get("Fn::GetAtt").is_none() {
                    problems.push(format!("{id}: the function must use a role of this template"));
                }
            }
            _ => {}
        }
    }
    if statements.is_empty() {
        problems.push("no IAM statements found".into());
    }
    for (role, statement) in statements {
        if statement["Effect"] != "Allow" {
            continue;
        }
        if !statement["NotAction"].is_null() || !statement["NotResource"].is_null() {
            problems.push(format!("{role}: NotAction/NotResource allow too much: {statement}"));
        }
        let actions = as_list(&statement["Action"]);
        let targets = as_list(&statement["Resource"]);
        if actions.is_empty() || targets.is_empty() {
            problems.push(format!("{role}: statement without actions or resources: {statement}"));
        }
        for action in &actions {
            let Some(action) = action.as_str() else {
                problems.push(format!("{role}: computed action {action}"));
                continue;
            };
            if action.contains('*') {
                problems.push(format!("{role}: wildcard action {action}"));
            }
            let Some((_, expected)) = ALLOWED.iter().find(|(prefix, _)| action.starts_with(prefix)) else {
                problems.push(format!("{role}: action {action} is outside logs, S3 and DynamoDB"));
                continue;
            };
            for target in &targets {
                match referenced(target) {
                    Ok(id) => match resources.get(&id).and_then(|r| r["Type"].as_str()) {
                        Some(kind) if kind == *expected => {}
                        Some(kind) => problems.push(format!("{role}: {action} on {id}, a {kind}")),
                        None => problems.push(format!("{role}: {action} on {id}, not a resource of this stack")),
                    },
                    Err(why) => problems.push(format!("{role}: {action}: {why}")),
                }
            }
        }
    }
    problems
}

#[test]
fn iam_statements_name_only_the_stacks_bucket_table_and_log_group() {
    let template = template();
    let problems = policy_violations(&template);
    assert!(problems.is_empty(), "{problems:#?}");

    // The role the function runs as is the only role, and lambda.amazonaws.com alone may assume it.
    let (role_id, role) = one_of_type(&template, "AWS::IAM::Role");
    let (_, function) = one_of_type(&template, "AWS::Serverless::Function");
    assert_eq!(function["Properties"]["Role"], json!({"Fn::GetAtt": [role_id, "Arn"]}));
    let trust = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"];
    assert_eq!(trust.as_array().unwrap().len(), 1);
    assert_eq!(trust[0]["Principal"], json!({"Service": "lambda.amazonaws.com"}));
    assert_eq!(trust[0]["Action"], "sts:AssumeRole");
}

#[test]
fn the_policy_check_catches_what_it_must() {
    let template = template();
    let (role_id, _) = one_of_type(&template, "AWS::IAM::Role");
    let role_id = role_id.clone();
    let with_statement = |statement: Value| {
        let mut changed = template.clone();
        changed["Resources"][&role_id]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            .as_array_mut()
            .unwrap()
            .push(statement);
        policy_violations(&changed)
    };
    let bad = [
        json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}),
        json!({"Effect": "Allow", "Action": "s3:*", "Resource": {"Fn::Sub": "${Bucket.Arn}/*"}}),
        json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::someone-elses-bucket/*"}),
        json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": {"Fn::Sub": "${Bucket.Arn}*"}}),
        json!({"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": {"Fn::GetAtt": ["Bucket", "Arn"]}}),
        json!({"Effect": "Allow", "Action": "iam:PassRole", "Resource": {"Fn::GetAtt": ["Table", "Arn"]}}),
        json!({"Effect": "Allow", "Action": "dynamodb:Query", "Resource": {"Fn::Sub": "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"}}),
        json!({"Effect": "Allow", "NotAction": "iam:*", "Resource": {"Fn::GetAtt": ["Table", "Arn"]}}),
    ];
    for statement in bad {
        assert!(!with_statement(statement.clone()).is_empty(), "not caught: {statement}");
    }
    let mut managed = template.clone();
    managed["Resources"][&role_id]["Properties"]["ManagedPolicyArns"] =
        json!(["arn:aws:iam::aws:policy/AmazonS3FullAccess"]);
    assert!(!policy_violations(&managed).is_empty());
    let mut sam_policies = template.clone();
    let (function_id, _) = one_of_type(&template, "AWS::Serverless::Function");
    sam_policies["Resources"][function_id]["Properties"]["Policies"] = json!(["AmazonS3ReadOnlyAccess"]);
    assert!(!policy_violations(&sam_policies).is_empty());
}

#[test]
fn resources_keep_the_promised_settings() {
    let template = template();
    let (bucket_id, bucket) = one_of_type(&template, "AWS::S3::Bucket");
    let bucket = &bucket["Properties"];
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(bucket["PublicAccessBlockConfiguration"][flag], true, "{flag}");
    }
    let sse = &bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"];
    assert!(sse["SSEAlgorithm"].is_string());
    let cors = &bucket["CorsConfiguration"]["CorsRules"][0];
    assert!(as_list(&cors["AllowedMethods"]).contains(&json!("PUT")));
    assert!(as_list(&cors["ExposedHeaders"]).contains(&json!("ETag")));
    let rules = as_list(&bucket["LifecycleConfiguration"]["Rules"]);
    assert!(rules.iter().any(|r| !r["AbortIncompleteMultipartUpload"].is_null()));
    assert!(
        rules
            .iter()
            .any(|r| !r["ExpirationInDays"].is_null() && r["Prefix"] == "handoff/uploads/")
    );

    // TLS only: the bucket policy denies every request without TLS.
    let (_, policy) = one_of_type(&template, "AWS::S3::BucketPolicy");
    assert_eq!(policy["Properties"]["Bucket"], json!({"Ref": bucket_id}));
    let deny = &policy["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Condition"]["Bool"]["aws:SecureTransport"], "false");

    let (_, table) = one_of_type(&template, "AWS::DynamoDB::Table");
    assert_eq!(table["Properties"]["BillingMode"], "PAY_PER_REQUEST");

    let (_, function) = one_of_type(&template, "AWS::Serverless::Function");
    let properties = &function["Properties"];
    assert_eq!(properties["Runtime"], "provided.al2023");
    assert_eq!(properties["Handler"], "bootstrap");
    let architecture = &template["Parameters"]["Architecture"];
    assert_eq!(architecture["Default"], "arm64");
    assert_eq!(architecture["AllowedValues"], json!(["arm64", "x86_64"]));
    let events = properties["Events"].as_object().unwrap();
    assert!(
        events
            .values()
            .any(|e| e["Type"] == "Schedule" || e["Type"] == "ScheduleV2")
    );
    // Every private route is behind the Cognito JWT authorizer with a scope; only named public paths opt out.
    let (_, api) = one_of_type(&template, "AWS::Serverless::HttpApi");
    let auth = &api["Properties"]["Auth"];
    let default = auth["DefaultAuthorizer"].as_str().unwrap();
    let authorizer = &auth["Authorizers"][default];
    assert!(!as_list(&authorizer["AuthorizationScopes"]).is_empty());
    let issuer = authorizer["JwtConfiguration"]["issuer"]["Fn::Sub"].as_str().unwrap();
    assert!(
        issuer.starts_with("https://cognito-idp.${AWS::Region}.amazonaws.com/${"),
        "{issuer}"
    );
    let public: Vec<&str> = events
        .values()
        .filter(|e| e["Properties"]["Auth"]["Authorizer"] == "NONE")
        .map(|e| e["Properties"]["Path"].as_str().unwrap())
        .collect();
    for path in &public {
        assert!(
            [
                "/s/",
                "/u/",
                "/healthz",
                "/readyz",
                "/.well-known/jwks.json",
                "/openapi.json",
                "/uploads"
            ]
            .iter()
            .any(|p| path.starts_with(p)),
            "{path} is public"
        );
    }
    for output in ["ApiUrl", "UserPoolId", "UserPoolClientId", "BucketName", "TableName"] {
        assert!(!template["Outputs"][output].is_null(), "output {output}");
    }
}

/// A value for an environment variable of the template: literals as they are, parameters at their defaults, and
/// other stack values as a placeholder. `None` for a conditional that may be left out.
fn resolve(template: &Value, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(map) => {
            if let Some(name) = map.get("Ref").and_then(Value::as_str) {
                let parameter = &template["Parameters"][name];
                return Some(match &parameter["Default"] {
                    Value::Null => format!("ref-{name}"),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
            if let Some(sub) = map.get("Fn::Sub").and_then(Value::as_str) {
                let mut out = String::new();
                let mut rest = sub;
                while let Some((before, after)) = rest.split_once("${") {
                    out.push_str(before);
                    let (_, tail) = after.split_once('}').unwrap();
                    out.push('x');
                    rest = tail;
                }
                out.push_str(rest);
                return Some(out);
            }
            if let Some(branches) = map.get("Fn::If").and_then(Value::as_array) {
                // The "set" branch, with a sample value: these are all optional numbers.
                return resolve(template, &branches[1]).map(|v| if v.is_empty() { "3600".into() } else { v });
            }
            panic!("unexpected intrinsic in the environment: {value}")
        }
        other => panic!("unexpected environment value {other}"),
    }
}

#[test]
fn the_functions_environment_is_a_valid_configuration() {
    let template = template();
    let (_, function) = one_of_type(&template, "AWS::Serverless::Function");
    let variables = function["Properties"]["Environment"]["Variables"].as_object().unwrap();
    let environment: Vec<(String, String)> = variables
        .iter()
        .filter_map(|(k, v)| resolve(&template, v).map(|v| (k.clone(), v)))
        .collect();
    let handoff_names = environment.iter().filter(|(k, _)| k.starts_with("HANDOFF_")).count();
    assert!(handoff_names > 10, "{environment:?}");
    let config = handoff_server::settings::load_from(None, environment.clone(), &[])
        .unwrap_or_else(|e| panic!("{e:?}\n{environment:#?}"));
    assert!(!config.auth.builtin_accounts, "identity comes from the user pool only");
    assert_eq!(config.downloads.mode, handoff_server::config::DownloadMode::Redirect);
    // PresignedUrlTtlSeconds bounds every presigned URL, not only the redirects' (tests/e2e.rs found the gap).
    assert_eq!(config.direct.url_ttl_secs, config.downloads.presigned_ttl_secs);
    assert_eq!(config.auth.oidc.len(), 1);
    let cognito = &config.auth.oidc[0];
    assert_eq!(cognito.name, "cognito");
    assert!(
        cognito.issuer.starts_with("https://cognito-idp.x.amazonaws.com/"),
        "{}",
        cognito.issuer
    );
    assert_eq!(cognito.token_use, handoff_server::config::TokenUse::Access);
    assert_eq!(cognito.username_claim, "username");
    assert_eq!(cognito.groups_claim, "cognito:groups");
    assert_eq!(cognito.admin_group.as_deref(), Some("handoff-admins"));
    assert!(config.database_url.as_deref().unwrap().starts_with("dynamodb://"));
    assert!(
        config
            .storage_url
            .as_deref()
            .unwrap()
            .starts_with("s3://x/handoff?region=")
    );
    assert_eq!(config.data_dir, PathBuf::from("/tmp/handoff"));
    // Every variable the template sets is a configuration key (none silently ignored).
    for (name, _) in &environment {
        assert!(
            name == "RUST_LOG" || name.starts_with("HANDOFF_"),
            "{name} is neither a Handoff setting nor RUST_LOG"
        );
    }
}

/// The cfn-lint to run: `HANDOFF_TEST_CFN_LINT`, else `cfn-lint` on the PATH. `.ci/run` installs a pinned one.
fn cfn_lint() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HANDOFF_TEST_CFN_LINT") {
        return Some(PathBuf::from(path));
    }
    Command::new("cfn-lint")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("cfn-lint"))
}

#[test]
fn cfn_lint_finds_nothing() {
    let Some(cfn_lint) = cfn_lint() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cfn-lint is missing (CI is set): .ci/run installs it and exports HANDOFF_TEST_CFN_LINT"
        );
        eprintln!("skipping: cfn-lint not found (set HANDOFF_TEST_CFN_LINT)");
        return;
    };
    let output = Command::new(&cfn_lint)
        .arg("--")
        .arg(template_path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cfn_lint.display()));
    assert!(
        output.status.success(),
        "cfn-lint reported (exit {:?}):\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The table the template creates is the one the DynamoDB store was written for: the same key schema, attribute
/// types and indexes as `crates/handoff-dynamo/table.json` (which the store's own tests compare with the code).
#[test]
fn the_table_matches_the_stores_key_schema() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../handoff-dynamo/table.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let template = template();
    let (_, table) = one_of_type(&template, "AWS::DynamoDB::Table");
    let table = &table["Properties"];
    let sorted = |v: &Value, key: &str| {
        let mut all = as_list(&v[key]);
        all.sort_by_key(|x| x.to_string());
        all
    };
    for key in ["AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes"] {
        assert_eq!(
            sorted(table, key),
            sorted(&expected, key),
            "{key} differs from table.json"
        );
    }
    assert_eq!(table["BillingMode"], expected["BillingMode"]);
}
