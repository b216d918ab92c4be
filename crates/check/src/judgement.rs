//! What judging a plan found: the object `godwit check --json` prints, and the refusal `run`
//! makes of it.

use godwit_plan::{Place, Plan, Step};
use serde::Serialize;

/// Every problem and finding of a plan: the object `godwit check --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    /// The plan's name.
    pub plan: String,
    /// Whether the plan can run (no problems).
    pub valid: bool,
    /// What must be fixed before the plan can run.
    pub problems: Vec<Problem>,
    /// Advice that does not make the plan invalid.
    pub findings: Vec<Finding>,
}

/// Something that makes the plan invalid.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The step concerned, if one.
    pub step: Option<String>,
    /// A stable code for machines (`missing-index-key`, `missing-table`, …).
    pub code: Option<String>,
    /// What is wrong, with file, line and column where known.
    pub message: String,
    /// A statement or change that would fix it.
    pub fix: Option<String>,
    /// Whether the plan or a database is at fault.
    #[serde(skip)]
    cause: Cause,
}

/// Advice about speed or safety.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The step concerned.
    pub step: String,
    /// A stable code for machines.
    pub code: String,
    /// `warning` or `info`.
    pub severity: String,
    /// What was found.
    pub message: String,
    /// What the database said that shows it, if anything.
    pub evidence: Option<String>,
    /// How to fix it.
    pub fix: Option<String>,
}

/// Why a problem stops the plan: `run` exits 2 for a mistake in the plan, 1 for a database
/// that could not answer (unless its URL is the mistake).
#[derive(Debug, Clone)]
enum Cause {
    Plan,
    Database {
        context: String,
        error: godwit_driver::Error,
    },
}

/// Why `run` or `submit` must not start a plan: what [`Judgement::refusal`] gives.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The plan cannot run as written; one line per problem.
    Invalid(String),
    /// Only a database that could not answer stands in the way.
    Database {
        /// What was being asked, with the plan location and step.
        context: String,
        /// The database's error.
        error: godwit_driver::Error,
    },
}

impl Problem {
    /// How `run` states the problem: the message, its code, and the fix on the same line.
    fn line(&self) -> String {
        let mut line = self.message.clone();
        if let Some(code) = &self.code {
            line.push_str(&format!(" ({code})"));
        }
        if let Some(fix) = &self.fix {
            line.push_str(&format!("; fix: {fix}"));
        }
        line
    }
}

impl Judgement {
    pub(crate) fn new(plan: &str) -> Judgement {
        Judgement {
            plan: plan.to_string(),
            valid: true,
            problems: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// A judgement of a plan file that did not parse: every error is a problem.
    pub fn from_plan_errors(plan: &str, errors: &godwit_plan::PlanErrors) -> Judgement {
        let mut judgement = Judgement::new(plan);
        for e in &errors.0 {
            judgement.push(Problem {
                step: None,
                code: None,
                message: e.to_string(),
                fix: None,
                cause: Cause::Plan,
            });
        }
        judgement
    }

    fn push(&mut self, problem: Problem) {
        self.valid = false;
        self.problems.push(problem);
    }

    /// A database of the plan (not of one step) that cannot be reached: `what` says which.
    pub(crate) fn unreachable(&mut self, plan: &Plan, what: &str, error: godwit_driver::Error) {
        let context = format!("{}: {what}", plan.path.display());
        self.push(Problem {
            step: None,
            code: Some("unreachable-database".into()),
            message: format!("{context}: {error}"),
            fix: None,
            cause: Cause::Database { context, error },
        });
    }

    /// Where a top-level key of `plan` was written, or the plan file when it was not.
    fn about(plan: &Plan, plan_key: &str, what: &str) -> String {
        match plan.place(plan_key) {
            Some(place) => format!("{place}: {what}"),
            None => format!("{}: {what}", plan.path.display()),
        }
    }

    /// A mistake in the plan, about its top-level key `plan_key` (or at `place`, when given:
    /// one of the key's values).
    pub(crate) fn plan_problem(
        &mut self,
        plan: &Plan,
        code: &str,
        (plan_key, place): (&str, Option<Place<'_>>),
        what: &str,
    ) {
        let message = match place {
            Some(place) => format!("{place}: {what}"),
            None => Judgement::about(plan, plan_key, what),
        };
        self.push(Problem {
            step: None,
            code: Some(code.to_string()),
            message,
            fix: None,
            cause: Cause::Plan,
        });
    }

    /// A database named by the plan's top-level key `plan_key` (at `place`, when given) that
    /// could not answer `what`.
    pub(crate) fn plan_database_problem(
        &mut self,
        plan: &Plan,
        (plan_key, place): (&str, Option<Place<'_>>),
        what: &str,
        error: godwit_driver::Error,
    ) {
        let context = match place {
            Some(place) => format!("{place}: {what}"),
            None => Judgement::about(plan, plan_key, what),
        };
        self.push(Problem {
            step: None,
            code: Some("unreachable-database".into()),
            message: format!("{context}: {error}"),
            fix: None,
            cause: Cause::Database { context, error },
        });
    }

    /// What stops `run` and `submit`, if anything: every problem, one line each, when the plan
    /// is at fault; the first database's error when only databases are.
    pub fn refusal(&self) -> Option<Refusal> {
        let plan_at_fault = self.problems.iter().any(|p| matches!(p.cause, Cause::Plan));
        if plan_at_fault {
            let lines: Vec<String> = self.problems.iter().map(Problem::line).collect();
            return Some(Refusal::Invalid(lines.join("\n")));
        }
        self.problems.iter().find_map(|p| match &p.cause {
            Cause::Plan => None,
            Cause::Database { context, error } => Some(Refusal::Database {
                context: context.clone(),
                error: error.clone(),
            }),
        })
    }
}

/// Judges one step: its problems and findings, each message starting with the place in the
/// plan file of the key at fault.
pub(crate) struct StepJudgement<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) step: &'a Step,
    pub(crate) depth: Depth,
    pub(crate) out: &'a mut Judgement,
}

impl StepJudgement<'_> {
    fn about(&self, plan_key: &str, what: &str) -> String {
        let place: Place = self.step.place(&self.plan.path, plan_key);
        format!("{place}: step {:?}: {what}", self.step.name)
    }

    /// A mistake in the plan, about its key `plan_key`.
    pub(crate) fn problem(&mut self, code: &str, plan_key: &str, what: &str, fix: Option<String>) {
        let message = self.about(plan_key, what);
        self.out.push(Problem {
            step: Some(self.step.name.clone()),
            code: Some(code.to_string()),
            message,
            fix,
            cause: Cause::Plan,
        });
    }

    /// A database that could not answer `what` (about the plan key `plan_key`).
    pub(crate) fn database_problem(
        &mut self,
        plan_key: &str,
        what: &str,
        error: godwit_driver::Error,
    ) {
        let context = self.about(plan_key, what);
        self.out.push(Problem {
            step: Some(self.step.name.clone()),
            code: None,
            message: format!("{context}: {error}"),
            fix: None,
            cause: Cause::Database { context, error },
        });
    }

    /// Advice that leaves the plan valid: a warning with what the database showed and how to
    /// fix it.
    pub(crate) fn finding(
        &mut self,
        code: &str,
        message: String,
        evidence: Option<String>,
        fix: Option<String>,
    ) {
        let duplicate = self
            .out
            .findings
            .iter()
            .any(|f| f.step == self.step.name && f.code == code && f.message == message);
        if duplicate {
            return;
        }
        self.out.findings.push(Finding {
            step: self.step.name.clone(),
            code: code.to_string(),
            severity: "warning".into(),
            message,
            evidence,
            fix,
        });
    }
}

impl StepJudgement<'_> {
    /// Information that is neither a problem nor a warning (severity `info`): what a step's
    /// `ensure` returns now.
    pub(crate) fn note(&mut self, code: &str, message: String, evidence: Option<String>) {
        self.out.findings.push(Finding {
            step: self.step.name.clone(),
            code: code.to_string(),
            severity: "info".into(),
            message,
            evidence,
            fix: None,
        });
    }
}

/// How far judging goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Everything, including the walk's first query and each batch statement on an empty range.
    Full,
    /// Everything but running the plan's statements (`where`, `sql`).
    BeforeRun,
}
