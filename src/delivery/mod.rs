//! Outbound delivery: where a recipient goes ([`route`]: smart host or MX, with its TLS policy
//! and AUTH; [`mx`]: the MX hosts' addresses; [`rollup`]: MX placements and the limits a named
//! site shares), the dispatcher that leases due messages, places them as `crate::queue::plan`
//! says and runs connections within their limits ([`dispatch`]; the limits are `crate::shaping`), the tokio driver
//! around the sans-IO SMTP client ([`conn`]: STARTTLS, AUTH, pipelining, BDAT). What an
//! outcome means for the recipient is `crate::delivery_error` (queue and bounce read it too);
//! DNS queries are in `crate::dns`; the plan, the fair ready queues, retry schedule and outcome
//! recording in `crate::queue`;
//! DSNs in `crate::bounce`. Its configuration section [`route`] lives here.

pub mod conn;
pub mod dispatch;
pub mod mx;
pub mod rollup;
pub mod route;
