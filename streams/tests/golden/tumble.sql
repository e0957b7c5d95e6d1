-- Tumbling one-minute windows per domain with a 5 s watermark delay: out-of-order rows
-- inside the delay count; a row whose window already closed goes to the late topic; each
-- window is emitted once, when the watermark passes its end.
== sql
CREATE TABLE access_logs (domain TEXT, status INT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (topic = 'access-logs');
INSERT INTO domain_stats
SELECT domain, window_start, window_end, count(*) AS hits,
       sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END) AS errors
FROM TUMBLE(access_logs, ts, INTERVAL '1' MINUTE)
GROUP BY domain, window_start, window_end;
== input
0 {"domain":"a","status":200,"ts":1000}
0 {"domain":"a","status":500,"ts":30000}
0 {"domain":"b","status":200,"ts":59000}
== input
0 {"domain":"a","status":200,"ts":62000}
0 {"domain":"b","status":503,"ts":58000}
== input
0 {"domain":"a","status":200,"ts":66000}
== input
0 {"domain":"b","status":200,"ts":10000}
0 {"domain":"a","status":200,"ts":130000}
== expected
result domain_stats key=a {"domain":"a","window_start":"1970-01-01T00:00:00","window_end":"1970-01-01T00:01:00","hits":2,"errors":1}
result domain_stats key=b {"domain":"b","window_start":"1970-01-01T00:00:00","window_end":"1970-01-01T00:01:00","hits":2,"errors":1}
result domain_stats key=a {"domain":"a","window_start":"1970-01-01T00:01:00","window_end":"1970-01-01T00:02:00","hits":2,"errors":0}
late %LATE%golden key=- {"domain":"b","status":200,"ts":10000} (late: its window closed (event time 10000 ms))
