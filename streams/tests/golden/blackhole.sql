-- Blackhole tables: results are computed and counted, not kept; a topic sink beside them
-- still gets its messages, and bad rows still go to the dead-letter topic.
== sql
CREATE TABLE access_logs (domain TEXT, status INT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts) WITH (topic = 'access-logs');
CREATE TABLE discard WITH (connector = 'blackhole');
INSERT INTO discard SELECT domain, status FROM access_logs WHERE status >= 400;
INSERT INTO Discard
SELECT domain, window_start, count(*) AS hits
FROM TUMBLE(access_logs, ts, INTERVAL '10' SECOND)
GROUP BY domain, window_start, window_end;
INSERT INTO errors SELECT domain AS key, status FROM access_logs WHERE status >= 500;
== input
0 {"domain":"a.com","status":200,"ts":1000}
0 {"domain":"b.com","status":503,"ts":2000}
0 {"domain":"c.com","status":404,"ts":3000}
0 {"domain":"c.com","status":"oops","ts":3000}
== input
0 {"domain":"d.com","status":200,"ts":12000}
== expected
result errors key=b.com {"key":"b.com","status":503}
dlq %DLQ%golden key=- {"domain":"c.com","status":"oops","ts":3000} (arrow: Json error: whilst decoding field 'status': failed to parse "oops" as Int32)
discarded 2 rows
discarded 3 rows
