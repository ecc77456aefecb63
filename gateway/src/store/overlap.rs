//! A store call sent before its answer is needed, over an async connection
//! ([`super::Store::start_claim`], [`super::Store::start_issued`]).
//!
//! The point is that the store's round trip runs while the request does its RSA work:
//! the claim goes out before the RA decryption, the issued record before the CertRep's
//! signature. With the `redis` crate's multiplexed connection a command is written by
//! the connection's own task, not by the caller; polling the call once only hands the
//! command over. That task, woken by the running one, is run next on the same worker
//! (tokio's "LIFO slot"), i.e. only when the running task gives the worker back. So
//! [`Overlapped::send`] polls once and then yields: the connection's task writes the
//! command, and the request carries on with its RSA work while Redis answers. No thread
//! is woken for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::ca::BoxFuture;

/// What becomes of an answer nobody awaited (the request failed before it needed it),
/// e.g. releasing a claim it won.
pub(super) type Orphan<T> = Box<dyn FnOnce(T) -> BoxFuture<'static, ()> + Send>;

/// A call already sent; awaiting it gives its answer and the time the request waited
/// on the store (sending, then waiting for the answer: not the RSA work in between, so
/// that the store latency metric stays the store's).
pub(super) struct Overlapped<T: Send + 'static> {
    /// `None` once answered.
    call: Option<BoxFuture<'static, T>>,
    /// An answer that arrived while polled but not yet handed out.
    answer: Option<T>,
    orphan: Option<Orphan<T>>,
    /// Time spent sending.
    sending: Duration,
    /// When the caller began to await the answer.
    awaited: Option<Instant>,
}

impl<T: Send + 'static> Overlapped<T> {
    /// Starts `call` (one poll hands its command to the connection), then yields once so
    /// that the connection's task writes it now.
    pub(super) async fn send(call: BoxFuture<'static, T>, orphan: Option<Orphan<T>>) -> Self {
        let started = Instant::now();
        let mut sent = Overlapped {
            call: Some(call),
            answer: None,
            orphan,
            sending: Duration::ZERO,
            awaited: None,
        };
        std::future::poll_fn(|cx| {
            let _ = sent.poll_call(cx);
            Poll::Ready(())
        })
        .await;
        tokio::task::yield_now().await;
        sent.sending = started.elapsed();
        sent
    }

    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(call) = &mut self.call {
            let answer = std::task::ready!(call.as_mut().poll(cx));
            self.answer = Some(answer);
            self.call = None;
        }
        Poll::Ready(())
    }
}

impl<T: Send + 'static> Future for Overlapped<T> {
    type Output = (T, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let awaited = *this.awaited.get_or_insert_with(Instant::now);
        std::task::ready!(this.poll_call(cx));
        let answer = this
            .answer
            .take()
            .expect("an Overlapped call is awaited once");
        Poll::Ready((answer, this.sending + awaited.elapsed()))
    }
}

impl<T: Send + 'static> Unpin for Overlapped<T> {}

impl<T: Send + 'static> Drop for Overlapped<T> {
    /// Not awaited to its end: the call still runs to its end (a record is written, a
    /// claim read), and its answer goes to the orphan handler.
    fn drop(&mut self) {
        let call = self.call.take();
        let answer = self.answer.take();
        let orphan = self.orphan.take();
        if call.is_none() && (answer.is_none() || orphan.is_none()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let answer = match (answer, call) {
                (Some(answer), _) => answer,
                (None, Some(call)) => call.await,
                (None, None) => return,
            };
            if let Some(orphan) = orphan {
                orphan(answer).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn an_awaited_call_gives_its_answer() {
        let sent = Overlapped::send(Box::pin(async { 7 }), None).await;
        assert_eq!(sent.await.0, 7);
    }

    #[tokio::test]
    async fn an_unawaited_call_runs_to_its_end_and_its_answer_goes_to_the_orphan() {
        let seen = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
        let seen_by_orphan = seen.clone();
        let orphan: Orphan<usize> = Box::new(move |answer| {
            Box::pin(async move {
                seen_by_orphan.store(answer, Ordering::SeqCst);
            })
        });
        let call: BoxFuture<'static, usize> = Box::pin(async move { rx.await.unwrap_or(0) });
        let sent = Overlapped::send(call, Some(orphan)).await;
        drop(sent);
        tx.send(42).unwrap();
        for _ in 0..100 {
            if seen.load(Ordering::SeqCst) == 42 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the orphan never saw the answer");
    }
}
