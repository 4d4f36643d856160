"""Events coming in from mail: bounces, complaints and unsubscribes that the ESPs report
(SES through SNS, SendGrid, Mailgun, Postmark), and messages sent to the `mailto:` of
`List-Unsubscribe`."""
