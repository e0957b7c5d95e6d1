-- Watermarks never go back: after a restart (idleness is not checkpointed, so the idle
-- queue holds the computed watermark back again) the checkpointed floor still makes a row
-- for a session already emitted late, instead of opening a second session for it.
== sql
CREATE TABLE clicks (user_id TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'clicks');
INSERT INTO visits
SELECT user_id, window_start, window_end, count(*) AS clicks
FROM SESSION(clicks, ts, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end;
== queues 2
== input
0 {"user_id":"u1","ts":1000}
0 {"user_id":"u1","ts":50000}
== idle 1
== restart
== queues 2
== input
0 {"user_id":"u1","ts":3000}
0 {"user_id":"u1","ts":70000}
== idle 1
== expected
result visits key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:01","window_end":"1970-01-01T00:00:11","clicks":1}
restarted
late %LATE%golden key=- {"user_id":"u1","ts":3000} (late: its window closed (event time 3000 ms))
result visits key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:50","window_end":"1970-01-01T00:01:00","clicks":1}
