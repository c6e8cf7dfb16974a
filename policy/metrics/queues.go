package metrics

import "github.com/prometheus/client_golang/prometheus"

// QueueLister is what QueueLengths reads of a queue's storage: any
// queue.Store (*queue.Spool among them) is one.
type QueueLister interface {
	// Queues lists the queues.
	Queues() ([]string, error)
	// IDs lists the messages of queue q.
	IDs(q string) ([]string, error)
}

// QueueLengths returns a collector of the number of messages in each queue
// of st (mtakit_queue_messages{queue="deferred"}), counted when it is
// scraped; register it beside the Metrics. A queue that cannot be listed
// makes the scrape report an error for it.
func QueueLengths(st QueueLister) prometheus.Collector { return queueLengths{st} }

var queueDesc = prometheus.NewDesc("mtakit_queue_messages", "Messages in each queue, counted at the scrape.", []string{"queue"}, nil)

type queueLengths struct{ st QueueLister }

func (q queueLengths) Describe(ch chan<- *prometheus.Desc) { ch <- queueDesc }

func (q queueLengths) Collect(ch chan<- prometheus.Metric) {
	names, err := q.st.Queues()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(queueDesc, err)
		return
	}
	for _, name := range names {
		ids, err := q.st.IDs(name)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(queueDesc, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(len(ids)), name)
	}
}
