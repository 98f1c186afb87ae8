//! The Lambda function's executable (`bootstrap` in the deployment package). Thin: logging, the application
//! built once in the init phase, then the runtime loop handing every event to `Handler::handle`.

use std::process::ExitCode;

use handoff_lambda::Handler;
use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    // CloudWatch stamps every line itself; colours would show up as escape codes.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    let handler = match Handler::from_env().await {
        Ok(handler) => handler,
        Err(e) => {
            // The init error is what CloudWatch shows for a function that cannot start.
            tracing::error!(error = %ErrorChain(&e), "could not start");
            return ExitCode::FAILURE;
        }
    };
    let handler = &handler;
    let run = lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handler.handle(event).await
    }));
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}

/// An error with its sources, `outer: inner: innermost`.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(inner) = source {
            write!(f, ": {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}
