-- Aggregates merged from pane state: min, max, avg, count(DISTINCT), approx_distinct and a
-- HAVING above the window aggregate; two queues, the watermark is the slower one's.
== sql
CREATE TABLE orders (customer TEXT, amount DOUBLE, item TEXT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts) WITH (topic = 'orders');
INSERT INTO order_stats
SELECT customer, window_end, count(*) AS orders, min(amount) AS smallest, max(amount) AS largest,
       avg(amount) AS average, count(DISTINCT item) AS items, approx_distinct(item) AS items_approx,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) AS median,
       count(*) FILTER (WHERE amount >= 20) AS large
FROM TUMBLE(orders, ts, INTERVAL '10' SECOND)
GROUP BY customer, window_start, window_end
HAVING count(*) > 1;
== input
0 {"customer":"c1","amount":10.0,"item":"x","ts":1000}
0 {"customer":"c1","amount":30.0,"item":"y","ts":2000}
1 {"customer":"c1","amount":20.0,"item":"x","ts":3000}
1 {"customer":"c2","amount":5.0,"item":"z","ts":4000}
== input
0 {"customer":"c1","amount":1.0,"item":"x","ts":15000}
== input
1 {"customer":"c2","amount":1.0,"item":"x","ts":16000}
== expected
result order_stats key=c1 {"customer":"c1","window_end":"1970-01-01T00:00:10","orders":3,"smallest":10.0,"largest":30.0,"average":20.0,"items":2,"items_approx":2,"median":20.0,"large":2}
