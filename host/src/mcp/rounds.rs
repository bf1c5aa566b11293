//! Multi round-trip requests (MRTR, MCP 2026-07-28) for upstreams that ask in the old way.
//!
//! A client on 2026-07-28 has no session, so the gateway cannot send it the
//! elicitation, sampling or roots request an upstream (on an older revision, in a
//! session with the gateway) makes while serving the client's call. Instead, the
//! client's request is answered with an `InputRequiredResult` that carries the
//! upstream's question, and the upstream call stays parked here, still waiting for its
//! answer, until the client retries with its answer and the `requestState` it was given.
//! The state stays in the gateway: `requestState` is only a random handle to it, bound
//! to the caller and the tool, prompt or resource it was given for.
//!
//! A parked call the client does not come back to is dropped after the egress read
//! timeout (the upstream would have given up by then); dropping it cancels the upstream
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ErrorData, InputRequest, InputRequests, InputRequiredResult, InputResponses, ServerResult,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::upstream::Target;

/// Marks a `requestState` as the gateway's own. Any other state belongs to an upstream
/// on 2026-07-28 that asked with an `InputRequiredResult` itself, and is passed on.
const STATE_PREFIX: &str = "portcullis-mrtr.";

/// Questions one call may have outstanding at once.
const QUESTIONS: usize = 8;

/// Calls one caller may have parked at once, and all callers together: each holds an
/// upstream request open, so a client that never comes back must not pile them up.
const PARKED_PER_CALLER: usize = 64;
const PARKED: usize = 4096;

/// Who may resume a parked call: the caller, asking for the same item (a tool, prompt or
/// resource, by its name on the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub caller: String,
    pub item: String,
}

/// Whether a client's `requestState` is one this gateway handed out.
pub fn is_ours(state: &str) -> bool {
    state.starts_with(STATE_PREFIX)
}

/// An upstream's question on its way to the client, and where its answer goes.
pub struct Question {
    pub request: InputRequest,
    pub answer: oneshot::Sender<Value>,
}

/// The asking side of a call in rounds, held by the call's [`super::upstream::Asker`]:
/// questions go to whichever round of the client's request is current, and so do the
/// call's progress and log messages.
#[derive(Clone)]
pub struct Asking<T = Target> {
    questions: mpsc::Sender<Question>,
    current: Arc<Mutex<T>>,
}

impl<T: Clone> Asking<T> {
    pub async fn ask(&self, q: Question) -> Result<(), ErrorData> {
        self.questions
            .send(q)
            .await
            .map_err(|_| ErrorData::internal_error("the client's request has ended", None))
    }

    /// Where the call's progress and log messages go now: the latest round's request.
    pub fn target(&self) -> T {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A call between rounds, or in one.
struct Parked<T> {
    /// Who may resume it, and for what.
    owner: Owner,
    current: Arc<Mutex<T>>,
    questions: mpsc::Receiver<Question>,
    /// The questions the client was asked in the last round, by their `inputRequests` key.
    pending: Vec<(String, oneshot::Sender<Value>)>,
    asked: u64,
    call: Running,
}

/// The upstream call's task, aborted when its [`Parked`] is dropped (expired, or its
/// client request cancelled): the upstream request is then cancelled too.
struct Running(JoinHandle<Result<ServerResult, ErrorData>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The calls parked between rounds, by their `requestState`.
pub struct Rounds<T = Target>(Mutex<HashMap<String, Parked<T>>>);

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Clone + Send + 'static> Rounds<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Parked<T>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The asking side for a new call whose client is reached at `target`, and the
    /// receiving side to hand to [`Rounds::start`].
    pub fn asking(target: T) -> (Asking<T>, Receiving<T>) {
        let (tx, rx) = mpsc::channel(QUESTIONS);
        let current = Arc::new(Mutex::new(target));
        (
            Asking {
                questions: tx,
                current: current.clone(),
            },
            Receiving {
                questions: rx,
                current,
            },
        )
    }

    /// Runs `call` (which asks through the [`Asking`] that came with `receiving`) and
    /// returns its answer, or, when it asks the client something first, an
    /// `InputRequiredResult` with the question and the call parked for `owner` (the
    /// caller and what it called: only the same may resume it).
    pub async fn start(
        self: &Arc<Self>,
        owner: Owner,
        receiving: Receiving<T>,
        call: impl Future<Output = Result<ServerResult, ErrorData>> + Send + 'static,
        cancel: &CancellationToken,
        patience: Duration,
    ) -> Result<ServerResult, ErrorData> {
        let parked = Parked {
            owner,
            current: receiving.current,
            questions: receiving.questions,
            pending: Vec::new(),
            asked: 0,
            call: Running(tokio::spawn(call)),
        };
        self.drive(parked, cancel, patience).await
    }

    /// Resumes the call parked under `state` with the client's `responses`, now reached
    /// at `target` (this round's request).
    pub async fn resume(
        self: &Arc<Self>,
        state: &str,
        owner: &Owner,
        responses: InputResponses,
        target: T,
        cancel: &CancellationToken,
        patience: Duration,
    ) -> Result<ServerResult, ErrorData> {
        let mut parked = {
            let mut all = self.lock();
            match all.remove(state) {
                Some(p) if p.owner == *owner => p,
                Some(p) => {
                    // Not this request's: left for the one it was given to.
                    all.insert(state.to_owned(), p);
                    return Err(ErrorData::invalid_params(
                        "the requestState was given for another request: send it only with the request that returned it",
                        None,
                    ));
                }
                None => {
                    return Err(ErrorData::invalid_params(
                        "the requestState is unknown or expired: make the request again without it",
                        None,
                    ));
                }
            }
        };
        *parked.current.lock().unwrap_or_else(|p| p.into_inner()) = target;
        let mut responses = responses;
        for (key, answer) in parked.pending.drain(..) {
            // A question left unanswered fails upstream (its sender is dropped).
            if let Some(v) = responses.remove(&key) {
                let _ = answer.send(v);
            }
        }
        self.drive(parked, cancel, patience).await
    }

    /// Waits for the call's answer or its next questions.
    async fn drive(
        self: &Arc<Self>,
        mut parked: Parked<T>,
        cancel: &CancellationToken,
        patience: Duration,
    ) -> Result<ServerResult, ErrorData> {
        let first = tokio::select! {
            done = &mut parked.call.0 => {
                return done.unwrap_or_else(|e| {
                    Err(ErrorData::internal_error(format!("the upstream call failed: {e}"), None))
                });
            }
            Some(q) = parked.questions.recv() => q,
            () = cancel.cancelled() => {
                return Err(ErrorData::internal_error("the request was cancelled by the client", None));
            }
        };
        // Questions asked together go out together.
        let mut asked = vec![first];
        while let Ok(q) = parked.questions.try_recv() {
            asked.push(q);
        }
        let mut requests = InputRequests::new();
        for q in asked {
            parked.asked += 1;
            let key = format!("q{}", parked.asked);
            requests.insert(key.clone(), q.request);
            parked.pending.push((key, q.answer));
        }
        let state = format!("{STATE_PREFIX}{}", crate::connections::random_token());
        {
            let mut all = self.lock();
            let callers = all
                .values()
                .filter(|p| p.owner.caller == parked.owner.caller)
                .count();
            if callers >= PARKED_PER_CALLER || all.len() >= PARKED {
                // Dropping the call cancels its upstream request.
                return Err(ErrorData::internal_error(
                    "too many calls are waiting for your answers: answer or cancel those first",
                    None,
                ));
            }
            all.insert(state.clone(), parked);
        }
        let me = Arc::downgrade(self);
        let expired = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(patience).await;
            if let Some(me) = me.upgrade() {
                me.lock().remove(&expired);
            }
        });
        Ok(ServerResult::InputRequiredResult(InputRequiredResult::new(
            Some(requests),
            Some(state),
        )))
    }
}

/// The receiving side of a call's questions (see [`Rounds::asking`]).
pub struct Receiving<T = Target> {
    questions: mpsc::Receiver<Question>,
    current: Arc<Mutex<T>>,
}

#[cfg(test)]
#[allow(deprecated)] // Roots are deprecated by SEP-2577, not yet gone.
mod tests {
    use super::*;
    use rmcp::model::{ListRootsRequest, ListRootsResult};

    fn roots() -> InputRequest {
        InputRequest::ListRoots(ListRootsRequest::default())
    }

    /// A call that asks `n` questions at once and answers with what it was told.
    async fn asking_call(asking: Asking<u32>, n: usize) -> Result<ServerResult, ErrorData> {
        let mut answers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = oneshot::channel();
            asking
                .ask(Question {
                    request: roots(),
                    answer: tx,
                })
                .await?;
            answers.push(rx);
        }
        let mut told = Vec::new();
        for rx in answers {
            match rx.await {
                Ok(v) => told.push(v),
                Err(_) => told.push(Value::String("unanswered".into())),
            }
        }
        Ok(ServerResult::CustomResult(rmcp::model::CustomResult(
            Value::Array(told),
        )))
    }

    fn input_required(r: ServerResult) -> InputRequiredResult {
        match r {
            ServerResult::InputRequiredResult(r) => r,
            other => panic!("expected input_required, got {other:?}"),
        }
    }

    fn told(r: ServerResult) -> Value {
        match r {
            ServerResult::CustomResult(c) => c.0,
            other => panic!("expected the call's answer, got {other:?}"),
        }
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    fn owned(caller: &str, item: &str) -> Owner {
        Owner {
            caller: caller.into(),
            item: item.into(),
        }
    }

    #[tokio::test]
    async fn a_call_that_asks_nothing_answers_at_once_and_parks_nothing() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let (asking, receiving) = Rounds::asking(1);
        let r = rounds
            .start(
                owned("ada", "x"),
                receiving,
                asking_call(asking, 0),
                &CancellationToken::new(),
                PATIENCE,
            )
            .await
            .expect("answer");
        assert_eq!(told(r), Value::Array(vec![]));
        assert!(rounds.lock().is_empty());
    }

    #[tokio::test]
    async fn questions_go_out_together_and_their_answers_resume_the_call() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let (asking, receiving) = Rounds::asking(1);
        let current = asking.clone();
        let cancel = CancellationToken::new();
        let owner = owned("ada", "x");
        let first = rounds
            .start(
                owner.clone(),
                receiving,
                asking_call(asking, 2),
                &cancel,
                PATIENCE,
            )
            .await
            .expect("a round");
        let first = input_required(first);
        let state = first.request_state.clone().expect("state");
        assert!(is_ours(&state), "{state}");
        let keys: Vec<_> = first
            .input_requests
            .expect("requests")
            .into_keys()
            .collect();
        // Both questions may not be out at once; answer what was asked, round by round.
        let mut answers = InputResponses::new();
        for k in &keys {
            answers.insert(
                k.clone(),
                serde_json::to_value(ListRootsResult::default()).expect("json"),
            );
        }
        let mut r = rounds
            .resume(&state, &owner, answers, 2, &cancel, PATIENCE)
            .await
            .expect("resumed");
        assert_eq!(
            current.target(),
            2,
            "progress and logs go to the latest round"
        );
        let mut round = 1;
        while let ServerResult::InputRequiredResult(more) = r {
            round += 1;
            assert!(round <= 2, "two questions take at most two rounds");
            let state = more.request_state.expect("state");
            let mut answers = InputResponses::new();
            for k in more.input_requests.expect("requests").into_keys() {
                answers.insert(k, serde_json::json!({"roots": []}));
            }
            r = rounds
                .resume(&state, &owner, answers, 3, &cancel, PATIENCE)
                .await
                .expect("resumed");
        }
        let told = told(r);
        assert_eq!(told.as_array().map(Vec::len), Some(2), "{told}");
        assert!(!told.to_string().contains("unanswered"), "{told}");
        assert!(rounds.lock().is_empty(), "nothing left parked");
    }

    #[tokio::test]
    async fn only_the_owner_resumes_and_an_unknown_state_is_refused() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let (asking, receiving) = Rounds::asking(1);
        let cancel = CancellationToken::new();
        let owner = owned("ada", "x");
        let r = rounds
            .start(
                owner.clone(),
                receiving,
                asking_call(asking, 1),
                &cancel,
                PATIENCE,
            )
            .await
            .expect("a round");
        let r = input_required(r);
        let state = r.request_state.expect("state");
        for other in [owned("bob", "x"), owned("ada", "y")] {
            let refused = rounds
                .resume(&state, &other, InputResponses::new(), 9, &cancel, PATIENCE)
                .await
                .expect_err("another caller or tool");
            assert!(
                refused.message.contains("another request"),
                "{}",
                refused.message
            );
        }
        let unknown = rounds
            .resume(
                "portcullis-mrtr.nope",
                &owner,
                InputResponses::new(),
                9,
                &cancel,
                PATIENCE,
            )
            .await
            .expect_err("unknown");
        assert!(
            unknown.message.contains("unknown or expired"),
            "{}",
            unknown.message
        );
        // The owner still can, and an answer left out fails that question only.
        let r = rounds
            .resume(&state, &owner, InputResponses::new(), 2, &cancel, PATIENCE)
            .await
            .expect("resumed");
        assert_eq!(told(r), serde_json::json!(["unanswered"]));
    }

    #[tokio::test]
    async fn a_call_the_client_never_comes_back_to_is_dropped_after_its_patience() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let (asking, receiving) = Rounds::asking(1);
        let cancel = CancellationToken::new();
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let call = async move {
            // Dropped with the task when the parked call is aborted.
            let _guard = dropped_tx;
            asking_call(asking, 1).await
        };
        let r = rounds
            .start(
                owned("ada", "x"),
                receiving,
                call,
                &cancel,
                Duration::from_millis(50),
            )
            .await
            .expect("a round");
        let _ = input_required(r);
        assert_eq!(rounds.lock().len(), 1);
        tokio::time::timeout(Duration::from_secs(5), dropped_rx)
            .await
            .expect("the parked call is aborted")
            .expect_err("dropped, not completed");
        assert!(rounds.lock().is_empty());
    }

    #[tokio::test]
    async fn a_caller_cannot_pile_up_parked_calls() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let cancel = CancellationToken::new();
        for _ in 0..PARKED_PER_CALLER {
            let (asking, receiving) = Rounds::asking(1);
            let call = asking_call(asking, 1);
            let r = rounds
                .start(owned("ada", "x"), receiving, call, &cancel, PATIENCE)
                .await
                .expect("a round");
            let _ = input_required(r);
        }
        let (asking, receiving) = Rounds::asking(1);
        let e = rounds
            .start(
                owned("ada", "x"),
                receiving,
                asking_call(asking, 1),
                &cancel,
                PATIENCE,
            )
            .await
            .expect_err("one too many");
        assert!(e.message.contains("too many calls"), "{}", e.message);
        // Another caller is not held up by her.
        let (asking, receiving) = Rounds::asking(1);
        let r = rounds
            .start(
                owned("bob", "x"),
                receiving,
                asking_call(asking, 1),
                &cancel,
                PATIENCE,
            )
            .await
            .expect("bob's round");
        let _ = input_required(r);
    }

    #[tokio::test]
    async fn a_cancelled_request_cancels_the_call() {
        let rounds = Arc::new(Rounds::<u32>::default());
        let (_asking, receiving) = Rounds::asking(1);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let never = std::future::pending::<Result<ServerResult, ErrorData>>();
        let e = rounds
            .start(owned("ada", "x"), receiving, never, &cancel, PATIENCE)
            .await
            .expect_err("cancelled");
        assert!(e.message.contains("cancelled"), "{}", e.message);
        assert!(rounds.lock().is_empty());
    }
}
