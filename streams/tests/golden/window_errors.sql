-- A window whose values make the part above the aggregate fail (an integer division by
-- zero) is reported on the dead-letter topic with its bounds; later windows go on.
== sql
CREATE TABLE t (k TEXT, a BIGINT, b BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 't');
INSERT INTO ratios
SELECT k, window_start, sum(a) / sum(b) AS ratio
FROM TUMBLE(t, ts, INTERVAL '10' SECOND)
GROUP BY k, window_start, window_end;
== input
0 {"k":"x","a":10,"b":0,"ts":1000}
0 {"k":"x","a":10,"b":5,"ts":11000}
0 {"k":"y","a":1,"b":1,"ts":25000}
== expected
result ratios key=x {"k":"x","window_start":"1970-01-01T00:00:10","ratio":2}
dlq %DLQ%golden key=- {"window_end_ms":10000,"window_start_ms":0} (the query failed on this window: datafusion: Arrow error: Divide by zero error)
