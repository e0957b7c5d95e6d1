-- A GROUP BY of the window columns alone: one result per window over every row, also
-- across a restart with windows and sessions open (their state has one constant key).
== sql
CREATE TABLE orders (amount BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'orders');
INSERT INTO totals
SELECT window_start, count(*) AS orders, sum(amount) AS total, max(amount) AS largest
FROM TUMBLE(orders, ts, INTERVAL '10' SECOND)
GROUP BY window_start, window_end;
INSERT INTO sessions
SELECT window_start, window_end, sum(amount) AS total
FROM SESSION(orders, ts, INTERVAL '3' SECOND)
GROUP BY window_start, window_end;
== input
0 {"amount":5,"ts":1000}
0 {"amount":7,"ts":2000}
0 {"amount":1,"ts":12000}
== restart
== input
0 {"amount":2,"ts":25000}
== expected
result totals key=- {"window_start":"1970-01-01T00:00:00","orders":2,"total":12,"largest":7}
result sessions key=- {"window_start":"1970-01-01T00:00:01","window_end":"1970-01-01T00:00:05","total":12}
restarted
result totals key=- {"window_start":"1970-01-01T00:00:10","orders":1,"total":1,"largest":1}
result sessions key=- {"window_start":"1970-01-01T00:00:12","window_end":"1970-01-01T00:00:15","total":1}
