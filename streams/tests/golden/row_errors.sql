-- A row the query cannot evaluate (integer division by zero) goes to the dead-letter topic
-- with DataFusion's error; the other rows of its micro-batch are processed, in stateless and
-- windowed queries alike.
== sql
CREATE TABLE parts (name TEXT, total BIGINT, count BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'parts');
INSERT INTO ratios SELECT name AS key, total / count AS ratio FROM parts;
INSERT INTO per_window
SELECT window_start, sum(total / count) AS ratios
FROM TUMBLE(parts, ts, INTERVAL '10' SECOND)
GROUP BY window_start, window_end;
== input
0 {"name":"a","total":10,"count":2,"ts":1000}
0 {"name":"b","total":10,"count":0,"ts":2000}
0 {"name":"c","total":9,"count":3,"ts":3000}
== input
0 {"name":"d","total":1,"count":1,"ts":20000}
== expected
result ratios key=a {"key":"a","ratio":5}
result ratios key=c {"key":"c","ratio":3}
dlq %DLQ%golden key=- {"name":"b","total":10,"count":0,"ts":2000} (the query failed on this row: datafusion: Arrow error: Divide by zero error)
dlq %DLQ%golden key=- {"name":"b","total":10,"count":0,"ts":2000} (the query failed on this row: datafusion: Arrow error: Divide by zero error)
result ratios key=d {"key":"d","ratio":1}
result per_window key=- {"window_start":"1970-01-01T00:00:00","ratios":8}
