"""What the email service did, for the Scenario 1 dashboard row."""

from prometheus_client import Counter

EMAILS_SENT = Counter("emails_sent_total", "Welcome emails sent (counted once their record committed).")
