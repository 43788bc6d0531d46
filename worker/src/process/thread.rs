//! The process stage on a thread of its own, fed the join's actions in batches: the join and
//! the process stage of one worker run on two cores instead of taking turns on one (local
//! mode, and the worker over Kafka). The
//! sending side classifies each action ([`Classifier`]: reading the record and evaluating the
//! predicates, a sixth of the stage's work) and sends the result, so the stage, the slower of
//! the two, only applies it.
//!
//! The stage sees the same actions in the same order as when it ran inline, and a checkpoint
//! is a barrier in that order: the stage answers it after applying every batch sent before,
//! with its outputs flushed and its state changes, so the caller writes one consistent
//! checkpoint of both stages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::plan::ClassifiedBatch;
use super::reconfigure::Reconfigured;
use super::{
    Classified, ProcessChanges, ProcessEngine, ProcessError, ProcessMeta, ProcessOutput,
    ProcessPlan,
};
use crate::join::record::RecordLayout;

/// Batches on their way to the stage: enough to keep it busy, few enough that a checkpoint
/// barrier waits for little.
const BATCHES_IN_FLIGHT: usize = 4;

/// The stage's outputs, as the thread owns them.
pub trait StageOutput: ProcessOutput + Send + 'static {
    /// What a checkpoint records of the outputs once flushed (local mode: file lengths).
    type Flushed: Send + 'static;
    fn flush(&mut self) -> Result<Self::Flushed, String>;
    /// Called at each checkpoint with the engine, before [`StageOutput::flush`] (the worker
    /// over Kafka renders the stage's Prometheus text from it).
    fn checkpointed(&mut self, _engine: &ProcessEngine) {}
}

/// The stage's part of a checkpoint.
pub struct StageCheckpoint<F> {
    pub flushed: F,
    pub meta: Vec<ProcessMeta>,
    pub watermarks: Vec<i64>,
    pub changes: ProcessChanges,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the process stage stopped: {0}")]
    Stopped(String),
}

/// Classifies action records for every definition, into a batch for [`ProcessThread::send`].
pub struct Classifier {
    plans: Vec<ProcessPlan>,
}

impl Classifier {
    /// The same definitions as the engine's, in the same order.
    pub fn new(plans: Vec<ProcessPlan>) -> Classifier {
        Classifier { plans }
    }

    /// Appends the action's classification for each definition to `batch`; with the
    /// `layout` the join wrote the record with, the record is not scanned again.
    pub fn add(
        &self,
        action: &str,
        layout: Option<&RecordLayout>,
        batch: &mut ClassifiedBatch,
    ) -> Result<(), ProcessError> {
        for (p, plan) in self.plans.iter().enumerate() {
            let classified = match layout {
                Some(layout) => plan.classify_written(action, layout),
                None => plan.classify(action),
            };
            classified
                .map_err(ProcessError::BadAction)?
                .encode(p as u16, batch);
        }
        Ok(())
    }

    /// The action's classification for definition `p` only (routed to it over Kafka), for
    /// the caller to check and [`Classified::encode`] into a batch.
    pub fn classify<'a>(&self, p: usize, action: &'a str) -> Result<Classified<'a>, ProcessError> {
        let plan = self
            .plans
            .get(p)
            .ok_or_else(|| ProcessError::BadAction(format!("no definition {p}")))?;
        plan.classify(action).map_err(ProcessError::BadAction)
    }
}

enum Job<F> {
    /// Classified actions (see [`Classifier`]).
    Actions(ClassifiedBatch),
    /// The end of a finite input: every changed aggregate is emitted.
    Finish,
    /// Late changes to closed windows emitted now (before the caller flushes the outputs
    /// for a checkpoint); answered when done.
    EmitUpdates(SyncSender<()>),
    Reconfigure(Vec<ProcessPlan>, SyncSender<Reconfigured>),
    /// A checkpoint; with `true`, the last of a state never resumed (see
    /// [`ProcessEngine::forget_changes`]).
    Checkpoint(SyncSender<Result<StageCheckpoint<F>, String>>, bool),
}

type Outcome<O> = Result<(ProcessEngine, O), String>;

/// The running stage. Dropping it without [`ProcessThread::close`] stops the thread after
/// the batches already sent.
pub struct ProcessThread<O: StageOutput> {
    jobs: Option<SyncSender<Job<O::Flushed>>>,
    /// Batches the stage is done with, to be filled again.
    spares: Receiver<ClassifiedBatch>,
    unsaved: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Outcome<O>>>,
    /// Why the stage stopped, once known.
    failure: Option<String>,
}

/// A checkpoint asked of the stage; [`PendingCheckpoint::wait`] for its answer.
pub struct PendingCheckpoint<F>(Receiver<Result<StageCheckpoint<F>, String>>);

impl<F> PendingCheckpoint<F> {
    pub fn wait<O: StageOutput<Flushed = F>>(
        self,
        stage: &mut ProcessThread<O>,
    ) -> Result<StageCheckpoint<F>, StageError> {
        match self.0.recv() {
            Ok(Ok(checkpoint)) => Ok(checkpoint),
            Ok(Err(e)) => {
                // The thread stops after answering so: nothing more goes to it.
                stage.failure = Some(e);
                Err(stage.stopped())
            }
            Err(_) => Err(stage.stopped()),
        }
    }
}

impl<O: StageOutput> ProcessThread<O> {
    pub fn start(mut engine: ProcessEngine, mut output: O) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel::<Job<O::Flushed>>(BATCHES_IN_FLIGHT);
        let (give_back, spares) = sync_channel(BATCHES_IN_FLIGHT + 1);
        let unsaved = Arc::new(AtomicUsize::new(engine.unsaved()));
        let shared = Arc::clone(&unsaved);
        let thread = std::thread::Builder::new()
            .name("process".into())
            .spawn(move || {
                for job in queue {
                    match job {
                        Job::Actions(mut batch) => {
                            apply_batch(&mut engine, &batch, &mut output)?;
                            shared.store(engine.unsaved(), Ordering::Relaxed);
                            batch.clear();
                            let _ = give_back.try_send(batch);
                        }
                        Job::Finish => engine.finish(&mut output),
                        Job::EmitUpdates(reply) => {
                            engine.emit_updates(&mut output);
                            let _ = reply.send(());
                        }
                        Job::Reconfigure(plans, reply) => {
                            let _ = reply.send(engine.reconfigure(plans));
                            shared.store(engine.unsaved(), Ordering::Relaxed);
                        }
                        Job::Checkpoint(reply, last) => {
                            let answer = checkpoint(&mut engine, &mut output, last);
                            shared.store(engine.unsaved(), Ordering::Relaxed);
                            let failed = answer.as_ref().err().cloned();
                            let _ = reply.send(answer);
                            if let Some(e) = failed {
                                return Err(e);
                            }
                        }
                    }
                }
                Ok((engine, output))
            })?;
        Ok(ProcessThread {
            jobs: Some(jobs),
            spares,
            unsaved,
            thread: Some(thread),
            failure: None,
        })
    }

    /// Sends the classified actions in `batch` to the stage, leaving `batch` empty.
    pub fn send(&mut self, batch: &mut ClassifiedBatch) -> Result<(), StageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let spare = self.spares.try_recv().unwrap_or_default();
        let full = std::mem::replace(batch, spare);
        self.job(Job::Actions(full))
    }

    /// Changes the stage holds that the next checkpoint writes, as of its last batch.
    pub fn unsaved(&self) -> usize {
        self.unsaved.load(Ordering::Relaxed)
    }

    /// Emits every changed aggregate (the end of a finite input), after the batches sent.
    pub fn finish_input(&mut self) -> Result<(), StageError> {
        self.job(Job::Finish)
    }

    /// Emits the late changes to closed windows, after the batches sent, and waits until
    /// they are handed to the outputs.
    pub fn emit_updates(&mut self) -> Result<(), StageError> {
        let (reply, answer) = sync_channel(1);
        self.job(Job::EmitUpdates(reply))?;
        answer.recv().map_err(|_| self.stopped())
    }

    /// Replaces the definitions (see [`ProcessEngine::reconfigure`]), after the batches sent.
    pub fn reconfigure(&mut self, plans: Vec<ProcessPlan>) -> Result<Reconfigured, StageError> {
        let (reply, answer) = sync_channel(1);
        self.job(Job::Reconfigure(plans, reply))?;
        answer.recv().map_err(|_| self.stopped())
    }

    /// Asks for the stage's checkpoint, after the batches sent; the caller prepares its own
    /// part meanwhile.
    pub fn checkpoint(&mut self) -> Result<PendingCheckpoint<O::Flushed>, StageError> {
        self.ask_checkpoint(false)
    }

    /// The last checkpoint of a state that is never resumed (local mode at the end of its
    /// input): the stored instances are deleted, not written (see
    /// [`ProcessEngine::forget_changes`]).
    pub fn last_checkpoint(&mut self) -> Result<PendingCheckpoint<O::Flushed>, StageError> {
        self.ask_checkpoint(true)
    }

    fn ask_checkpoint(&mut self, last: bool) -> Result<PendingCheckpoint<O::Flushed>, StageError> {
        let (reply, answer) = sync_channel(1);
        self.job(Job::Checkpoint(reply, last))?;
        Ok(PendingCheckpoint(answer))
    }

    /// Stops the stage once it has done everything sent, and gives back the engine (for the
    /// summary) and the outputs.
    pub fn close(mut self) -> Result<(ProcessEngine, O), StageError> {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome.map_err(StageError::Stopped),
            Some(Err(_)) => Err(StageError::Stopped("the thread panicked".into())),
            None => Err(StageError::Stopped("already closed".into())),
        }
    }

    fn job(&mut self, job: Job<O::Flushed>) -> Result<(), StageError> {
        match self.jobs.as_ref().map(|jobs| jobs.send(job)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Why the thread is gone (it stopped on an error); it takes no more jobs.
    fn stopped(&mut self) -> StageError {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            self.failure = Some(match thread.join() {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => "the thread ended".into(),
                Err(_) => "the thread panicked".into(),
            });
        }
        let failure = self.failure.clone();
        StageError::Stopped(failure.unwrap_or_else(|| "the thread is gone".into()))
    }
}

fn apply_batch(
    engine: &mut ProcessEngine,
    batch: &ClassifiedBatch,
    output: &mut impl ProcessOutput,
) -> Result<(), String> {
    let actions = batch.decode().map(|read| match read {
        Some((p, classified)) => Ok((usize::from(p), classified)),
        None => Err(ProcessError::BadAction(
            "a classified action cut short".into(),
        )),
    });
    engine
        .apply_many(actions, output)
        .map_err(|e| e.to_string())
}

fn checkpoint<O: StageOutput>(
    engine: &mut ProcessEngine,
    output: &mut O,
    last: bool,
) -> Result<StageCheckpoint<O::Flushed>, String> {
    engine.emit_updates(output);
    output.checkpointed(engine);
    let flushed = output.flush()?;
    Ok(StageCheckpoint {
        flushed,
        meta: engine.meta(),
        watermarks: engine.watermarks().to_vec(),
        changes: match last {
            true => engine.forget_changes(),
            false => engine.checkpoint_changes(),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::process::ProcessPlan;
    use weft_crds::keygroup::KeyGroupRange;

    #[derive(Default)]
    struct Collected {
        metrics: usize,
        fail_flush: bool,
    }

    impl ProcessOutput for Collected {
        fn metric(&mut self, _: &[u8]) {
            self.metrics += 1;
        }
        fn alert(&mut self, _: &[u8]) {}
    }

    impl StageOutput for Collected {
        type Flushed = usize;
        fn flush(&mut self) -> Result<usize, String> {
            if self.fail_flush {
                return Err("disk full".into());
            }
            Ok(self.metrics)
        }
    }

    fn engine() -> ProcessEngine {
        ProcessEngine::new(plans(), 8, KeyGroupRange { start: 0, end: 8 }, 3_600_000)
    }

    fn plans() -> Vec<ProcessPlan> {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/credit-card"
        );
        let resources = [
            std::path::PathBuf::from(format!("{example}/processdefinition.yaml")),
            std::path::PathBuf::from(format!("{example}/joinpipeline.yaml")),
        ];
        let (_, processes) = crate::local::load_pipeline(&resources, None).unwrap();
        processes
            .iter()
            .map(|(name, spec)| ProcessPlan::compile(name, spec).unwrap())
            .collect()
    }

    /// An action record classified into a batch of its own.
    fn classified(classifier: &Classifier, n: u32, path: &str) -> ClassifiedBatch {
        let mut batch = ClassifiedBatch::default();
        classifier.add(&action(n, path), None, &mut batch).unwrap();
        batch
    }

    fn action(n: u32, path: &str) -> String {
        let t = 1_763_798_400_000i64 + i64::from(n) * 1_000;
        format!(
            "{{\"trackingNumber\":\"T-{n}\",\"keyGroup\":0,\"firstEventTime\":{t},\"completedEventTime\":{t},\"request\":{{\"eventTime\":{t},\"path\":\"/cc/{path}\",\"applicationNo\":\"A-{}\",\"product\":\"gold\",\"institution\":\"B001\"}},\"response\":{{\"eventTime\":{t},\"applicationNo\":\"A-{}\",\"status\":200,\"decision\":\"approved\"}},\"tracking\":{{\"eventTime\":{t},\"channel\":\"web\",\"page\":\"cc-{path}\"}}}}",
            n / 2,
            n / 2
        )
    }

    #[test]
    fn a_checkpoint_answers_after_every_action_sent_before_it() {
        let mut stage = ProcessThread::start(engine(), Collected::default()).unwrap();
        let classifier = Classifier::new(plans());
        let mut inline = engine();
        let mut inline_out = Collected::default();
        let mut batch = ClassifiedBatch::default();
        for n in 0..400 {
            let path = if n % 2 == 0 { "apply" } else { "review" };
            inline.apply(&action(n, path), &mut inline_out).unwrap();
            classifier.add(&action(n, path), None, &mut batch).unwrap();
            // Batches of several actions, and one of one.
            if n % 7 == 0 || n == 399 {
                stage.send(&mut batch).unwrap();
                assert!(batch.is_empty());
            }
        }
        let checkpoint = stage.checkpoint().unwrap().wait(&mut stage).unwrap();
        inline.emit_updates(&mut inline_out);
        let expected = inline.checkpoint_changes();
        assert_eq!(checkpoint.flushed, inline_out.metrics);
        assert_eq!(checkpoint.watermarks, inline.watermarks());
        assert_eq!(checkpoint.changes.instances.len(), expected.instances.len());
        assert_eq!(stage.unsaved(), 0);
        let (engine, _) = stage.close().unwrap();
        assert_eq!(engine.processes[0].totals(), inline.processes[0].totals());
        assert!(inline.processes[0].totals().started > 0);
    }

    #[test]
    fn a_failing_output_stops_the_stage_with_its_reason() {
        let output = Collected {
            fail_flush: true,
            ..Collected::default()
        };
        let mut stage = ProcessThread::start(engine(), output).unwrap();
        let classifier = Classifier::new(plans());
        stage
            .send(&mut classified(&classifier, 1, "apply"))
            .unwrap();
        let error = match stage.checkpoint().unwrap().wait(&mut stage) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the flush failed"),
        };
        assert!(error.contains("disk full"), "{error}");
        // Gone after the error: later calls say why instead of hanging.
        let later = stage.send(&mut classified(&classifier, 2, "apply"));
        assert!(later.is_err_and(|e| e.to_string().contains("disk full")));
        assert!(stage.close().is_err());
    }
}
