//! The accept loop. `axum::serve` installs no timer, which leaves hyper's header-read timeout inert, so we drive
//! hyper-util ourselves: a header-read timeout (slowloris), a cap on the header section, an idle timeout on every
//! socket read and write (stalled bodies, stalled readers, idle keep-alive), and graceful shutdown that lets
//! in-flight requests finish within a deadline.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;

use crate::maintenance;
use crate::state::AppState;

/// Serves the application on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    let header_timeout = Duration::from_secs(limits.header_read_timeout_secs.max(1));
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs.max(1));

    let (stop_maintenance, maintenance_stopped) = tokio::sync::watch::channel(false);
    let maintenance = tokio::spawn(maintenance::run(state.clone(), maintenance_stopped));

    let audit = state.audit.clone();
    let app = crate::router(state);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_read_timeout(Some(idle_timeout));
        io.set_write_timeout(Some(idle_timeout));
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(Box::pin(io)), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("some requests were still running after {grace:?}; closing them");
    }
    let _ = stop_maintenance.send(true);
    let _ = maintenance.await;
    audit.flush().await;
    Ok(())
}
