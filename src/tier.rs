//! Placing a person in a tier by their IdP groups, and the refusal when no tier fits.

use crate::config::{Plan, Tier};
use crate::reply::{Reply, ToReply};

/// The first tier, in config order, that lists one of `groups`.
pub fn select<'a>(plan: &'a Plan, groups: &[String]) -> Option<(usize, &'a Tier)> {
    plan.tiers.iter().enumerate().find(|(_, tier)| tier.groups.iter().any(|g| groups.contains(g)))
}

/// A verified person whose groups match no tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTier {
    /// The groups that give access, when the config lets the refusal name them.
    pub required: Option<Vec<String>>,
    /// Whom to ask, from the config.
    pub contact: Option<String>,
    /// The token carried no groups for their number ([`crate::jwt::Identity::groups_overage`]).
    pub overage: bool,
}

impl NoTier {
    /// The refusal for `plan`.
    pub fn new(plan: &Plan) -> NoTier {
        let required = plan.access.show_groups.then(|| {
            // Each once, in the order of the tiers (a group may open several).
            let mut groups: Vec<String> = Vec::new();
            for group in plan.tiers.iter().flat_map(|t| &t.groups) {
                if !groups.contains(group) {
                    groups.push(group.clone());
                }
            }
            groups
        });
        NoTier { required, contact: plan.access.contact.clone(), overage: false }
    }

    /// The refusal for a person whose token left the groups out for their number.
    pub fn overage(self, overage: bool) -> NoTier {
        NoTier { overage, ..self }
    }
}

impl ToReply for NoTier {
    // Claude Code retries a 401/403 for about four minutes, re-running its helper each time, and
    // a 400 is shown at once without a retry; so a settled "no access" is a 400, not a 403.
    fn to_reply(&self) -> Reply {
        let groups = self.required.as_ref().map(|g| format!(" (one of: {})", g.join(", "))).unwrap_or_default();
        let whom = self.contact.as_deref().unwrap_or("your administrator");
        let message = if self.overage {
            format!(
                "gateway: access denied: you are signed in, but your token lists no groups: you are in more groups \
                 than the identity provider puts in a token (Entra ID leaves them out past 200). Signing in again \
                 will not change this: ask {whom} to have the token carry only the groups assigned to the \
                 application{groups}"
            )
        } else {
            format!(
                "gateway: access denied: you are signed in, but your account is in no group that may use \
                 Claude{groups}. To get access, ask {whom}"
            )
        };
        Reply::error(400, "no_tier", "permission_error", &message).with_header("x-should-retry", "false")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::plan;

    #[test]
    fn first_matching_tier_in_config_order_wins() {
        let plan = plan();
        let g = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            ("standard", g(&["claude-standard-users"]), Some("standard")),
            ("power", g(&["x", "claude-power-users"]), Some("power")),
            ("both: power is listed first", g(&["claude-standard-users", "claude-power-users"]), Some("power")),
            ("none", g(&["engineering"]), None),
            ("empty", g(&[]), None),
        ];
        for (name, groups, want) in cases {
            assert_eq!(select(&plan, &groups).map(|(_, t)| t.name.as_str()), want, "{name}");
        }
    }

    #[test]
    fn a_token_that_left_the_groups_out_says_so() {
        let r = NoTier::new(&plan()).overage(true).to_reply();
        assert_eq!((r.status, r.reason), (400, "no_tier"));
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("your token lists no groups") && body.contains("Entra ID"), "{body}");
        assert!(body.contains("Signing in again will not change this"), "{body}");
    }

    #[test]
    fn no_tier_reply_says_whom_to_ask_and_stops_retries() {
        let mut plan = plan();
        let r = NoTier::new(&plan).to_reply();
        assert_eq!(r.status, 400);
        assert!(r.headers.contains(&("x-should-retry".into(), "false".into())));
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("in no group that may use Claude. To get access, ask your administrator"), "{body}");
        assert!(!body.contains("claude-power-users"), "group names are not shown unless configured: {body}");
        plan.access.contact = Some("#claude-access on Slack".into());
        plan.access.show_groups = true;
        let body = String::from_utf8(NoTier::new(&plan).to_reply().body).unwrap();
        assert!(
            body.contains(
                "(one of: claude-power-users, claude-standard-users). To get access, ask #claude-access on Slack"
            ),
            "{body}"
        );
        // A group that opens two tiers is named once.
        let shared = plan.tiers[0].groups[0].clone();
        plan.tiers[1].groups.push(shared);
        let body = String::from_utf8(NoTier::new(&plan).to_reply().body).unwrap();
        assert!(body.contains("(one of: claude-power-users, claude-standard-users)"), "{body}");
    }
}
